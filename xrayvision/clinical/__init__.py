"""Clinical helpers: patient identifiers, protocol-text interpretation and agreement statistics."""
