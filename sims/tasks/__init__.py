"""Task environments; see `sims.registry`."""
