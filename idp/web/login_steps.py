"""The login chain's later steps (being written)."""
