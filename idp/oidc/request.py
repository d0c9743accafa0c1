"""The request object Authlib's grants see: parameters read once by the web layer, plus
the unit-of-work database session and the OIDC context of this request."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from authlib.oauth2.rfc6749 import OAuth2Payload, OAuth2Request
from sqlalchemy.orm import Session

from idp.oidc.context import OidcContext


class ParamsPayload(OAuth2Payload):
    def __init__(self, params: Mapping[str, str]) -> None:
        self._data = dict(params)

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        # Duplicated parameters were refused before we got here: one value each.
        return defaultdict(list, {k: [v] for k, v in self._data.items()})


class IdpRequest(OAuth2Request):
    def __init__(
        self,
        *,
        method: str,
        uri: str,
        headers: Mapping[str, str],
        params: Mapping[str, str],
        db: Session,
        ctx: OidcContext,
        client_ip: str | None = None,
    ) -> None:
        super().__init__(method=method, uri=uri, headers=headers)  # case-insensitive: keep as given
        self.payload = ParamsPayload(params)
        self.db = db
        self.ctx = ctx
        self.client_ip = client_ip
        # set by the authorization endpoint from the IdP session that approved the request
        self.login: Any = None
        # the client that authenticated, as soon as it has (Authlib sets `client` only once the
        # whole request is valid; an error answer still belongs to the client that asked)
        self.authenticated_client: Any = None
        # the user's groups, when this request had to read them already (an access check):
        # the groups claim reuses them instead of a second query
        self.memberships: tuple[Any, ...] | None = None

    @property
    def args(self) -> dict[str, str]:
        return self.payload.data

    @property
    def form(self) -> dict[str, str]:
        return self.payload.data
