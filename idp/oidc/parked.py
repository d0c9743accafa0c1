"""What of an authorization request is kept while it waits for the login chain or the
consent page (issue 15): only the parameters idp honours, within a size bound. Anything
else is dropped, as RFC 6749 §3.1 lets a server ignore parameters it does not recognise."""

from __future__ import annotations

import json
from collections.abc import Mapping

# Every parameter the resumed request is decided on (idp/oidc/authorize.py, Authlib's code
# grant, PKCE and OpenID checks) or a page reads (redirect_uri and response_mode for the way
# back, state, scope for consent, login_hint). `request` and `request_uri` are refused before
# anything is parked; claims, display, ui_locales and id_token_hint are not honoured.
PARKED_PARAMETERS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "prompt",
    "max_age",
    "acr_values",
    "login_hint",
    "response_mode",
)

# The kept parameters, as JSON in the stored transaction. The longest request idp otherwise
# accepts fits: a registered redirect_uri (≤ 2000 characters), state (≤ 2048), nonce (≤ 512),
# a PKCE challenge (≤ 128) and ~3 KB for scope, acr_values, login_hint and the rest. An
# unauthenticated request parks at most this much instead of all it sent (~58 KB before).
MAX_PARKED_BYTES = 8 * 1024


def build_parked_params(params: Mapping[str, str]) -> dict[str, str]:
    return {name: params[name] for name in PARKED_PARAMETERS if name in params}


def parked_size(params: Mapping[str, str]) -> int:
    """Bytes the kept parameters take in a stored transaction (ASCII JSON, as it is saved)."""
    return len(json.dumps(build_parked_params(params)))
