"""What both providers are seeded with: the one benchmark client and the one user."""

from __future__ import annotations

CLIENT_ID = "bench"
CLIENT_SECRET = "bench-secret-0123456789abcdefghijklmnopqrstuvwxyz"
REDIRECT_URI = "http://localhost:9999/callback"  # never contacted: the driver stops at it
SCOPE = "openid profile email offline_access"
CLIENT_CREDENTIALS_SCOPE = "profile"  # openid and offline_access need a user
USERNAME = "alice"
PASSWORD = "benchmark passphrase: horse battery 42"  # NIST: ≥15 characters, not a common one

CLIENTS_TOML = f"""\
# The benchmark's one relying party, the same as bench/peers/oidc-provider/server.mjs's.
[[clients]]
client_id = "{CLIENT_ID}"
client_name = "Benchmark"
client_secret = "{CLIENT_SECRET}"
redirect_uris = ["{REDIRECT_URI}"]
grant_types = ["authorization_code", "refresh_token", "client_credentials"]
token_endpoint_auth_method = "client_secret_basic"
scope = "{SCOPE}"
"""
