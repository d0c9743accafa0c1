"""idp's benchmark harness: `make bench` (python -m bench.run) starts idp and the
node-oidc-provider peer, drives the same scenarios against both and writes a Markdown table."""
