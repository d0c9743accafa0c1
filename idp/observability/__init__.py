"""What operators watch: Prometheus metrics, the request id carried by logs and audit
events, and the JSON request log."""
