"""Clinical helpers: patient identifiers and protocol-text interpretation."""
