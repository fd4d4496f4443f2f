"""The HTTP face: auth, errors, the JSON API and images."""
