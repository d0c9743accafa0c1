"""The users and relying parties every app-level test starts with."""

from __future__ import annotations

from joserfc.jwk import RSAKey

from idp.clients_file import parse_clients_toml
from idp.clients_sync import sync_clients
from idp.users import add_user
from idp.web.services import Services

PASSWORD = "correct horse battery staple"
SHOP_SECRET = "shop-secret-0123456789abcdefghijklmnopqrstuvwxyz"
RP_KEY = RSAKey.generate_key(2048, parameters={"kid": "rp-key-1"})

CLIENTS_TOML = f"""
[[clients]]
client_id = "shop"
client_name = "Shop"
client_secret = "{SHOP_SECRET}"
redirect_uris = ["https://shop.example/callback"]
grant_types = ["authorization_code", "refresh_token", "client_credentials"]
token_endpoint_auth_method = "client_secret_basic"
scope = "openid profile email offline_access"

[[clients]]
client_id = "spa"
client_name = "Single Page App"
redirect_uris = ["http://localhost:5173/callback"]
grant_types = ["authorization_code", "refresh_token"]
token_endpoint_auth_method = "none"
scope = "openid profile email"

[[clients]]
client_id = "portal"
client_name = "Portal"
client_secret = "{SHOP_SECRET}-portal"
redirect_uris = ["https://portal.example/cb"]
grant_types = ["authorization_code"]
token_endpoint_auth_method = "client_secret_post"
scope = "openid profile email"
first_party = true

[[clients]]
client_id = "backend"
client_name = "Backend"
redirect_uris = ["https://backend.example/cb"]
grant_types = ["authorization_code", "client_credentials"]
token_endpoint_auth_method = "private_key_jwt"
scope = "openid profile"
"""


def seed(services: Services) -> None:
    configs = parse_clients_toml(_toml_with_inline_jwks(), source="seed")
    with services.sessions.begin() as db:
        sync_clients(db, services.keyring, configs)
        for username, email in (("alice", "alice@example.com"), ("bob", "bob@example.com")):
            add_user(
                db, username=username, email=email, name=username.title(), password_hash=services.hashing.hash(PASSWORD)
            )
    services.oidc.clients.reload()  # what the app's background refresher would do within seconds


def _toml_with_inline_jwks() -> str:
    public = RP_KEY.as_dict(private=False)
    fields = ", ".join(f'{k} = "{v}"' for k, v in public.items())
    return CLIENTS_TOML + f"jwks = {{ keys = [ {{ {fields} }} ] }}\n"
