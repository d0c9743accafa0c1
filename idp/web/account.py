"""/account: self-service second factors (being written)."""
