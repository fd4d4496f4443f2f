"""Analysis: the vision model's endpoints, the prompts, the answers and the queue worker."""
