"""The admin's clients file (TOML): parse it and validate every client before any is used.

Field names are RFC 7591 / OpenID Connect Registration 1.0 client metadata, plus the idp
extension `first_party`. The first problem stops the whole file, in one line naming file:line,
client and field.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from joserfc.jwk import KeySet

from idp.attributes import custom_claim_problem
from idp.oidc.origins import origin_of
from idp.revocation import JWT_ACCESS_MAX_SECONDS
from idp.scopes import SUPPORTED_SCOPES, ScopeDeclaration

SUPPORTED_GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")
SUPPORTED_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
ID_TOKEN_ALGS = ("RS256", "ES256", "Ed25519", "EdDSA")
APPLICATION_TYPES = ("web", "native")
_MAX_AGE_LIMIT_SECONDS = 366 * 86400
# RFC 7591 / OIDC Registration fields idp does not honour: refused by name, never ignored
NOT_HONOURED = {
    "frontchannel_logout_uri": "front-channel logout is not offered; use backchannel_logout_uri",
    "frontchannel_logout_session_required": "front-channel logout is not offered; use backchannel_logout_uri",
    "userinfo_signed_response_alg": "userinfo answers are plain JSON over TLS, never signed",
    "userinfo_encrypted_response_alg": "userinfo answers are never encrypted",
    "userinfo_encrypted_response_enc": "userinfo answers are never encrypted",
    "id_token_encrypted_response_alg": "ID tokens are signed, never encrypted",
    "id_token_encrypted_response_enc": "ID tokens are signed, never encrypted",
    "request_object_signing_alg": "request objects are not accepted",
    "request_object_encryption_alg": "request objects are not accepted",
    "request_object_encryption_enc": "request objects are not accepted",
    "request_uris": "request objects are not accepted",
    "sector_identifier_uri": "pairwise subjects are not offered",
    "initiate_login_uri": "third-party-initiated login is not offered",
    "token_endpoint_auth_signing_alg": (
        "client assertions may use RS256, PS256 or ES256, as the client's keys allow "
        '(pin one with the key\'s own "alg" member in jwks)'
    ),
    "software_statement": "software statements are not accepted",
}
ACR_LADDER = ("pwd", "mfa", "phr")
TOP_LEVEL_KEYS = ("clients", "default_allowed_groups", "scopes")
GROUPS_CLAIM_VALUES = ("allowed", "all")  # the groups claim lists the client's allowed_groups, or every group
ID_TOKEN_CLAIMS_VALUES = ("full", "minimal")  # "minimal": scope claims only at userinfo
ACCESS_TOKEN_FORMATS = ("opaque", "jwt")  # "jwt": RFC 9068, verified without a lookup
ACCESS_TOKEN_ALGS = ("ES256", "Ed25519")  # a JWT access token's signature (RFC 9864's name for EdDSA)
_JWT_ONLY_KEYS = ("access_token_signing_alg", "access_token_lifetime", "access_token_audience")
SCOPE_NAME = re.compile(r"[a-z][a-z0-9_.:-]{0,63}")
SCOPE_KEYS = ("name", "claims", "description")
_NOT_OFFERED_SCOPES = ("address",)  # OIDC Core §5.4 names it; idp does not release addresses
_MAX_DESCRIPTION_CHARS = 200
GROUP_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # idp/groups.py carries names in this form

_CLIENT_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_CLIENTS_HEADER = re.compile(r"""\s*\[\[\s*(?:clients|"clients"|'clients')\s*\]\]""")
_SCOPES_HEADER = re.compile(r"""\s*\[\[\s*(?:scopes|"scopes"|'scopes')\s*\]\]""")
_SCOPES_ANY_HEADER = re.compile(r"""\s*\[\[?\s*(?:scopes|"scopes"|'scopes')\s*[\].]""")  # and [scopes.x]
_ANY_HEADER = re.compile(r"\s*\[")
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")  # urlsplit drops the brackets of [::1]
_MAX_URI_CHARS = 2000
_MIN_SECRET_CHARS = 32
_MIN_SECRET_DISTINCT_CHARS = 8  # "xxxx…" and "changeme…" placeholders are long but not secret
_SECRET_HINT = "make a random one with: openssl rand -hex 32"
# RSA, EC and OKP private members, RSA multi-prime, and a symmetric key's secret
_PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_Table = dict[str, Any]  # one [[clients]] table as tomllib returns it
_TOML_TYPES = {str: "string", bool: "boolean", int: "integer", float: "float", list: "array", dict: "table"}


class ClientsFileError(ValueError):
    """The clients file cannot be used; the message is one line: file:line: client: field: problem."""

    def __init__(self, message: str) -> None:
        # the CLI prints this as its one line on stderr, whatever a value or a path contained
        super().__init__(" ".join(message.splitlines()))


@dataclass(frozen=True)
class ClientConfig:
    """One relying party as the admin described it, every field validated and defaulted."""

    client_id: str
    client_name: str
    client_secret: str | None = field(repr=False)  # plain; the DB layer keeps only a keyed hash
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]
    grant_types: tuple[str, ...]
    response_types: tuple[str, ...]
    token_endpoint_auth_method: str
    scope: str  # space separated, as in RFC 7591
    default_acr_values: tuple[str, ...]
    backchannel_logout_uri: str | None
    backchannel_logout_session_required: bool
    jwks: dict[str, Any] | None = field(hash=False)  # public JWK Set; a dict is unhashable
    jwks_uri: str | None
    first_party: bool  # idp extension: no consent page for the admin's own apps
    client_uri: str | None  # shown on the consent page (https)
    logo_uri: str | None  # shown on the consent page (https; loaded with no referrer)
    # PKCE (S256) on every authorization; false only for a confidential client whose RP cannot
    # send it (RFC 9700 §2.1.1: then a nonce is required instead, and each one is audited)
    require_pkce: bool = True
    # private_key_jwt: also accept the token endpoint URL (a single string) as the assertion's
    # aud, for RPs that follow OIDC Core §9's older advice; the issuer alone otherwise
    token_endpoint_audience_compat: bool = False
    allowed_cors_origins: tuple[str, ...] = ()  # pages that may call token, userinfo and revoke
    policy_uri: str | None = None  # shown on the consent page (https)
    tos_uri: str | None = None  # shown on the consent page (https)
    # "native" (RFC 8252; inferred from private-use scheme redirects): its loopback IP redirects
    # (http://127.0.0.1/…, http://[::1]/…, not localhost) accept any port at request time (§7.3)
    application_type: str = "web"
    subject_type: str = "public"  # the same `sub` for every client; "pairwise" is not offered
    id_token_signed_response_alg: str = "RS256"  # RS256 | ES256 | Ed25519 (RFC 9864) | EdDSA (its older name)
    default_max_age: int | None = None  # seconds: max_age for requests that send none
    require_auth_time: bool = False  # idp always puts auth_time in ID tokens, so either value is honoured
    contacts: tuple[str, ...] = ()  # for the admin (`idp clients show`); never shown to users
    # Who may use this app: members of any of these groups; None = everyone. The file's
    # top-level default_allowed_groups stands in when a client names none.
    allowed_groups: tuple[str, ...] | None = None
    # the `groups` claim lists the user's groups among allowed_groups ("allowed"), or all of them
    groups_claim: str = "allowed"
    id_token_claims: str = "full"  # "minimal": the scopes' claims only at userinfo, not in the ID token
    # "jwt": access tokens are RFC 9068 JWTs that resource servers can verify with /jwks, and
    # that userinfo and introspection check without a token lookup (no row is written)
    access_token_format: str = "opaque"
    access_token_signing_alg: str = "ES256"  # jwt only: ES256 | Ed25519
    access_token_lifetime: int | None = None  # jwt only: seconds, at most 300 (None: min(300, the server's))
    access_token_audience: tuple[str, ...] = ()  # jwt only: the aud claim (none given: the issuer)
    # derived, not a key: the [[scopes]] that this client's scope names, so that no later
    # reader (token endpoint, userinfo, consent, discovery) needs the file
    declared_scopes: tuple[ScopeDeclaration, ...] = ()

    @property
    def is_public(self) -> bool:
        return self.token_endpoint_auth_method == "none"


_DERIVED_FIELDS = ("declared_scopes",)
_FIELDS = tuple(f.name for f in fields(ClientConfig) if f.name not in _DERIVED_FIELDS)


def parse_clients_file(
    path: str | os.PathLike[str], *, known_groups: Collection[str] | None = None
) -> list[ClientConfig]:
    source = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ClientsFileError(f"{source}: no such clients file") from None
    except OSError as exc:
        raise ClientsFileError(f"{source}: cannot read the clients file: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")  # TOML is UTF-8; tolerate the BOM some editors write
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ClientsFileError(f"{source}:{line}: not UTF-8 (byte {exc.start})") from None
    return parse_clients_toml(text, source=source, known_groups=known_groups)


def parse_clients_toml(
    text: str, *, source: str = "<clients>", known_groups: Collection[str] | None = None
) -> list[ClientConfig]:
    """`known_groups`: the groups in the database, when the file is about to be synced into
    it; a group name that is not one of them is then an error (None: names are only checked
    for their form)."""
    document = _load_toml(text, source)
    layout = _Layout(text)
    tables = _client_tables(document, source, layout)
    wide = _file_wide(document, source, layout, known_groups)
    taken: dict[str, int] = {}
    clients = []
    for index, table in enumerate(tables):
        header_line, span = layout.client_span(index, len(tables))
        clients.append(_read_client(table, _Where(source, layout, index, header_line, span), taken, wide))
    return clients


@dataclass(frozen=True)
class _FileWide:
    """What the file says outside its [[clients]] tables, that every client reads."""

    default_allowed_groups: tuple[str, ...] | None
    known_groups: frozenset[str] | None
    scopes: dict[str, ScopeDeclaration] = field(default_factory=dict)  # [[scopes]] by name


def _file_wide(
    document: dict[str, Any], source: str, layout: _Layout, known_groups: Collection[str] | None
) -> _FileWide:
    known = frozenset(known_groups) if known_groups is not None else None
    default = document.get("default_allowed_groups")
    if default is not None:
        line = layout.top_level_line("default_allowed_groups")

        def fail(problem: str, index: int | None = None) -> NoReturn:
            label = "default_allowed_groups" + ("" if index is None else f"[{index}]")
            raise ClientsFileError(f"{_at(source, line)}{label}: {problem}")

        default = _group_names(default, known, fail)
    return _FileWide(default, known, _declared_scopes(document, source, layout))


def _declared_scopes(document: dict[str, Any], source: str, layout: _Layout) -> dict[str, ScopeDeclaration]:
    tables = document.get("scopes", [])
    if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
        line = layout.top_level_line("scopes")
        raise ClientsFileError(f"{_at(source, line)}scopes: must be an array of tables, written [[scopes]]")
    declared: dict[str, ScopeDeclaration] = {}
    for index, table in enumerate(tables):
        header_line, span = layout.scope_span(index, len(tables))
        scope = _read_scope(table, _Where(source, layout, index, header_line, span, kind="scopes"), declared)
        declared[scope.name] = scope
    return declared


def _read_scope(table: _Table, where: _Where, declared: dict[str, ScopeDeclaration]) -> ScopeDeclaration:
    if isinstance(table.get("name"), str) and SCOPE_NAME.fullmatch(table["name"]):
        where.client_id = table["name"]
    for key in table:
        if key not in SCOPE_KEYS:
            where.fail(key, f"unknown key (a [[scopes]] table has {', '.join(SCOPE_KEYS)})")
    name = _string(table, "name", where)
    if name is None:
        where.fail("name", "required")
    if not SCOPE_NAME.fullmatch(name):
        where.fail("name", "must be 1-64 characters of a-z 0-9 _ . : -, starting with a letter")
    if name in SUPPORTED_SCOPES or name in _NOT_OFFERED_SCOPES:
        where.fail("name", f"{_show(name)} is a standard scope (OpenID Connect Core 5.4), not one to declare")
    if name in declared:
        where.fail("name", "declared twice")
    claims = _strings(table, "claims", where, default=())
    if not claims:
        where.fail("claims", "required: a non-empty array of attribute names (idp user set U --attr NAME=VALUE)")
    for index, claim in enumerate(claims):
        if problem := custom_claim_problem(claim):
            where.fail("claims", f"{_show(claim)}: {problem}", index)
    return ScopeDeclaration(name, tuple(dict.fromkeys(claims)), _description(table, where))


def _description(table: _Table, where: _Where) -> str | None:
    text = _string(table, "description", where)
    if text is not None and (not text.strip() or len(text) > _MAX_DESCRIPTION_CHARS):
        where.fail("description", f"must be 1-{_MAX_DESCRIPTION_CHARS} characters (it is shown on the consent page)")
    if text is not None and any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        where.fail("description", "must be one line without control characters")
    return text


def _group_names(
    value: Any, known: frozenset[str] | None, fail: Callable[[str, int | None], NoReturn]
) -> tuple[str, ...]:
    """Group names, as written (any case), carried in lower case; each must exist when the
    database's groups are known."""
    if not isinstance(value, list) or not value:
        fail("must be a non-empty array of group names (leave it out to let everyone in)", None)
    names = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not GROUP_NAME.fullmatch(item.lower()):
            fail("not a group name (1-64 characters of a-z 0-9 . _ -, starting with a letter or digit)", index)
        name = item.lower()
        if known is not None and name not in known:
            fail(f"no group named {_show(name)} (create it first: idp group add {name})", index)
        names.append(name)
    return tuple(dict.fromkeys(names))


def _load_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's decoder keeps its position only in the message: "… (at line 3, column 5)"
        # or "… (at end of document)"
        message, _, position = str(exc).partition(" (at ")
        found = re.fullmatch(r"line (\d+), column (\d+)\)", position)
        where = f"{found[1]}:{found[2]}" if found else str(text.count("\n") + 1)
        raise ClientsFileError(f"{source}:{where}: invalid TOML: {message}") from None
    except RecursionError:
        raise ClientsFileError(f"{source}: invalid TOML: arrays or tables nested too deeply") from None


def _client_tables(document: dict[str, Any], source: str, layout: _Layout) -> list[_Table]:
    for key in document:
        if key not in TOP_LEVEL_KEYS:
            line = layout.top_level_line(key)
            problem = f"unknown top-level key {_show(key)}: only {', '.join(TOP_LEVEL_KEYS)} belong here"
            raise ClientsFileError(_at(source, line) + problem)
    tables = document.get("clients", [])  # no clients at all is a valid (empty) file
    if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
        line = layout.top_level_line("clients")
        raise ClientsFileError(f"{_at(source, line)}clients: must be an array of tables, written [[clients]]")
    return tables


class _Layout:
    """Line numbers of tables and keys: tomllib reports none, so find them in the raw text."""

    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")  # TOML, and tomllib's error positions, count "\n" only
        self.headers = [n for n, line in enumerate(self.lines, 1) if _CLIENTS_HEADER.match(line)]
        # [[scopes]] tables (and their keys) may follow the last client: they end its span
        self.scope_headers = [n for n, line in enumerate(self.lines, 1) if _SCOPES_HEADER.match(line)]
        scope_tables = (n for n, line in enumerate(self.lines, 1) if _SCOPES_ANY_HEADER.match(line))
        self.ends = sorted({*self.headers, *scope_tables})  # where a table's span ends

    def top_level_line(self, key: str) -> int | None:
        assignment, table = _key_patterns(key, parent=None)
        in_root = True
        for number, line in enumerate(self.lines, 1):
            in_root = in_root and not _ANY_HEADER.match(line)
            if table.match(line) or (in_root and assignment.match(line)):
                return number
        return None

    def client_span(self, index: int, count: int) -> tuple[int | None, range]:
        return self._span("clients", self.headers, index, count)

    def scope_span(self, index: int, count: int) -> tuple[int | None, range]:
        return self._span("scopes", self.scope_headers, index, count)

    def _span(self, key: str, headers: list[int], index: int, count: int) -> tuple[int | None, range]:
        if len(headers) != count:
            # inline `clients = [{…}]`, or a header-like line inside a string: keep to what is sure
            return self.top_level_line(key), range(0)
        start = headers[index]
        # up to the next [[clients]] or [[scopes]] table, whichever the file has first
        end = min((n for n in self.ends if n > start), default=len(self.lines) + 1)
        return start, range(start, end)

    def key_line(self, key: str, span: range, parent: str = "clients") -> int | None:
        assignment, table = _key_patterns(key, parent=parent)
        for number in span:
            line = self.lines[number - 1]
            if assignment.match(line) or table.match(line):
                return number
        return None


def _key_patterns(key: str, parent: str | None) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """`key =` (or dotted `key.x =`) and a `[key]` / `[parent.key]` table header."""
    name = _name_pattern(key)
    prefix = rf"{_name_pattern(parent)}\s*\.\s*" if parent else ""
    return re.compile(rf"\s*{name}\s*[=.]"), re.compile(rf"\s*\[\[?\s*{prefix}{name}\s*[\].]")


def _name_pattern(key: str) -> str:
    escaped = re.escape(key)
    return rf"""(?:{escaped}|"{escaped}"|'{escaped}')"""


@dataclass
class _Where:
    """Where one client sits in the file, so that each message names file:line, client and field."""

    source: str
    layout: _Layout
    index: int
    header_line: int | None
    span: range
    client_id: str | None = None  # the client's id, or the name of a [[scopes]] table
    kind: str = "clients"  # or "scopes"

    def fail(self, key: str, problem: str, index: int | None = None) -> NoReturn:
        line = self.layout.key_line(key, self.span, parent=self.kind) or self.header_line
        who = f'{self.kind[:-1]} "{self.client_id}"' if self.client_id else f"{self.kind}[{self.index}]"
        label = (key if _BARE_KEY.fullmatch(key) else _show(key)) + ("" if index is None else f"[{index}]")
        raise ClientsFileError(f"{_at(self.source, line)}{who}: {label}: {problem}")


def _read_client(table: _Table, where: _Where, taken: dict[str, int], wide: _FileWide) -> ClientConfig:
    # A fixed order (identity, authentication, then the rest) keeps "the first problem" stable.
    if isinstance(table.get("client_id"), str) and _CLIENT_ID.fullmatch(table["client_id"]):
        where.client_id = table["client_id"]  # name the client even in the first message
    _check_known_keys(table, where)
    client_id = _client_id(table, where, taken)
    secret = _string(table, "client_secret", where)
    grants = _grant_types(table, where)
    method = _auth_method(table, where, secret)
    jwks, jwks_uri = _jwks(table, where), _web_uri(table, "jwks_uri", where)
    _check_credentials(where, method=method, secret=secret, grants=grants, jwks=jwks, jwks_uri=jwks_uri)
    config = ClientConfig(
        client_id=client_id,
        client_name=_client_name(table, where, client_id),
        client_secret=secret,
        redirect_uris=_redirect_uris(table, where, grants, public=method == "none"),
        post_logout_redirect_uris=_web_uris(table, "post_logout_redirect_uris", where),
        grant_types=grants,
        response_types=_response_types(table, where, grants),
        token_endpoint_auth_method=method,
        scope=_scope(table, where, grants, wide),
        default_acr_values=_acr_values(table, where),
        backchannel_logout_uri=_web_uri(table, "backchannel_logout_uri", where),
        backchannel_logout_session_required=_flag(table, "backchannel_logout_session_required", where, True),
        jwks=jwks,
        jwks_uri=jwks_uri,
        first_party=_flag(table, "first_party", where, False),
        client_uri=_https_uri(table, "client_uri", where),
        logo_uri=_https_uri(table, "logo_uri", where),
        require_pkce=_require_pkce(table, where, public=method == "none"),
        token_endpoint_audience_compat=_audience_compat(table, where, method),
        allowed_cors_origins=_origins(table, "allowed_cors_origins", where),
        policy_uri=_https_uri(table, "policy_uri", where),
        tos_uri=_https_uri(table, "tos_uri", where),
        application_type=_application_type(table, where),
        subject_type=_choice(
            table,
            "subject_type",
            where,
            ("public",),
            default="public",
            why="idp gives every client the same sub; pairwise subjects are not offered",
        ),
        id_token_signed_response_alg=_choice(
            table,
            "id_token_signed_response_alg",
            where,
            ID_TOKEN_ALGS,
            default="RS256",
            why="ID tokens are always signed",
        ),
        default_max_age=_seconds(table, "default_max_age", where),
        require_auth_time=_flag(table, "require_auth_time", where, False),
        contacts=_strings(table, "contacts", where, default=()),
        allowed_groups=_allowed_groups(table, where, wide),
        groups_claim=_choice(table, "groups_claim", where, GROUPS_CLAIM_VALUES, default="allowed", why=""),
        id_token_claims=_choice(table, "id_token_claims", where, ID_TOKEN_CLAIMS_VALUES, default="full", why=""),
        **_access_token_format(table, where),
    )
    _check_groups_claim(config, table, where)
    scopes = config.scope.split()
    return replace(config, declared_scopes=tuple(wide.scopes[s] for s in scopes if s in wide.scopes))


def _access_token_format(table: _Table, where: _Where) -> dict[str, Any]:
    chosen = _choice(table, "access_token_format", where, ACCESS_TOKEN_FORMATS, default="opaque", why="")
    if chosen == "opaque":
        for key in _JWT_ONLY_KEYS:
            if key in table:
                where.fail(key, 'used only with access_token_format = "jwt"')
        return {"access_token_format": chosen}
    lifetime = table.get("access_token_lifetime")
    if lifetime is not None and (
        isinstance(lifetime, bool) or not isinstance(lifetime, int) or not 1 <= lifetime <= JWT_ACCESS_MAX_SECONDS
    ):
        # a JWT cannot be recalled from a resource server that checks it alone: short-lived
        where.fail("access_token_lifetime", f"must be an integer number of seconds from 1 to {JWT_ACCESS_MAX_SECONDS}")
    audience = _strings(table, "access_token_audience", where, default=())
    for index, value in enumerate(audience):
        if not value or len(value) > 200 or value != value.strip():
            where.fail("access_token_audience", "must be a resource server's identifier (1-200 characters)", index)
    return {
        "access_token_format": chosen,
        "access_token_signing_alg": _choice(
            table, "access_token_signing_alg", where, ACCESS_TOKEN_ALGS, default="ES256", why=""
        ),
        "access_token_lifetime": lifetime,
        "access_token_audience": audience,
    }


def _check_groups_claim(config: ClientConfig, table: _Table, where: _Where) -> None:
    """The groups claim names only groups the client may see: those in its allowed_groups,
    or every group when the admin said so."""
    if "groups" not in config.scope.split():
        if "groups_claim" in table:
            where.fail("groups_claim", 'used only with "groups" in scope')
        return
    if config.groups_claim == "allowed" and config.allowed_groups is None:
        where.fail(
            "scope",
            '"groups" needs allowed_groups (the groups this client may see in the claim) or groups_claim = "all"',
        )


def _allowed_groups(table: _Table, where: _Where, wide: _FileWide) -> tuple[str, ...] | None:
    if "allowed_groups" not in table:
        return wide.default_allowed_groups

    def fail(problem: str, index: int | None = None) -> NoReturn:
        where.fail("allowed_groups", problem, index)

    return _group_names(table["allowed_groups"], wide.known_groups, fail)


def _check_known_keys(table: _Table, where: _Where) -> None:
    for key in table:
        if key in NOT_HONOURED:
            where.fail(key, f"not supported: {NOT_HONOURED[key]} (remove it)")
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, _FIELDS, n=1)
            where.fail(key, "unknown key" + (f" (did you mean {close[0]}?)" if close else ""))


def _client_id(table: _Table, where: _Where, taken: dict[str, int]) -> str:
    client_id = _string(table, "client_id", where)
    if client_id is None:
        where.fail("client_id", "required")
    if not _CLIENT_ID.fullmatch(client_id):
        where.fail("client_id", "must be 1-128 characters of A-Z a-z 0-9 . _ ~ -")
    if client_id in taken:
        where.fail("client_id", f"already used by clients[{taken[client_id]}]")
    taken[client_id] = where.index
    return client_id


def _client_name(table: _Table, where: _Where, client_id: str) -> str:
    name = _string(table, "client_name", where)
    if name is None:
        return client_id
    if not name.strip():
        where.fail("client_name", "must not be blank")
    return name


def _grant_types(table: _Table, where: _Where) -> tuple[str, ...]:
    grants = _strings(table, "grant_types", where, default=("authorization_code",))  # RFC 7591 §2
    if not grants:
        where.fail("grant_types", "must not be empty")
    for index, grant in enumerate(grants):
        if grant not in SUPPORTED_GRANT_TYPES:
            supported = ", ".join(SUPPORTED_GRANT_TYPES)
            where.fail("grant_types", f"unsupported grant type {_show(grant)} (supported: {supported})", index)
    if "refresh_token" in grants and "authorization_code" not in grants:
        # RFC 6749 §4.4.3: client_credentials gets no refresh token; only the code flow issues one
        where.fail("grant_types", "refresh_token needs authorization_code")
    return grants


def _response_types(table: _Table, where: _Where, grants: tuple[str, ...]) -> tuple[str, ...]:
    # RFC 7591 §2.1: response_types and grant_types must agree; "code" is the only flow we serve
    uses_code = "authorization_code" in grants
    types = _strings(table, "response_types", where, default=("code",) if uses_code else ())
    for index, response_type in enumerate(types):
        if response_type != "code":
            problem = f'unsupported response type {_show(response_type)} (only "code")'
            where.fail("response_types", problem, index)
    if uses_code and "code" not in types:
        where.fail("response_types", 'must include "code" when grant_types has authorization_code')
    if types and not uses_code:
        where.fail("response_types", '"code" needs authorization_code in grant_types')
    return types


def _auth_method(table: _Table, where: _Where, secret: str | None) -> str:
    method = _string(table, "token_endpoint_auth_method", where)
    if method is None:
        return "none" if secret is None else "client_secret_basic"
    if method not in SUPPORTED_AUTH_METHODS:
        supported = ", ".join(SUPPORTED_AUTH_METHODS)
        problem = f"unsupported method {_show(method)} (supported: {supported})"
        where.fail("token_endpoint_auth_method", problem)
    return method


def _check_credentials(
    where: _Where,
    *,
    method: str,
    secret: str | None,
    grants: tuple[str, ...],
    jwks: dict[str, Any] | None,
    jwks_uri: str | None,
) -> None:
    if method in ("client_secret_basic", "client_secret_post"):
        _check_secret(secret, method, where)
    elif secret is not None:
        where.fail("client_secret", f'not used with token_endpoint_auth_method = "{method}": remove it')
    if method == "none" and "client_credentials" in grants:
        where.fail("grant_types", 'client_credentials needs an authenticated client, not method "none"')
    if method != "private_key_jwt" and (jwks is not None or jwks_uri is not None):
        key = "jwks" if jwks is not None else "jwks_uri"
        where.fail(key, 'used only with token_endpoint_auth_method = "private_key_jwt"')
    if method == "private_key_jwt" and jwks is not None and jwks_uri is not None:
        where.fail("jwks", "give jwks or jwks_uri, not both")
    if method == "private_key_jwt" and jwks is None and jwks_uri is None:
        where.fail("token_endpoint_auth_method", "private_key_jwt needs jwks or jwks_uri (the client's public keys)")


def _check_secret(secret: str | None, method: str, where: _Where) -> None:
    # never echo the secret: these messages reach terminals and logs
    if secret is None:
        where.fail("client_secret", f'required with token_endpoint_auth_method = "{method}"')
    if len(secret) < _MIN_SECRET_CHARS:
        where.fail("client_secret", f"too short: at least {_MIN_SECRET_CHARS} characters ({_SECRET_HINT})")
    if not all(" " <= char <= "~" for char in secret):
        where.fail("client_secret", "must be printable ASCII (RFC 6749 appendix A: VSCHAR)")
    if len(set(secret)) < _MIN_SECRET_DISTINCT_CHARS:
        where.fail("client_secret", f"too weak: looks like a placeholder ({_SECRET_HINT})")


def _jwks(table: _Table, where: _Where) -> dict[str, Any] | None:
    jwks = table.get("jwks")
    if jwks is None:
        return None
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        where.fail("jwks", 'must be a JWK Set: a table with a non-empty "keys" array')
    try:
        json.dumps(jwks, allow_nan=False)  # it is published and compared as JSON
    except (TypeError, ValueError):
        where.fail("jwks", "must hold only strings, numbers, booleans, arrays and tables")
    for index, key in enumerate(jwks["keys"]):
        _check_public_jwk(key, index, where)
    return jwks


def _check_public_jwk(key: Any, index: int, where: _Where) -> None:
    if not isinstance(key, dict):
        where.fail("jwks", f"keys[{index}]: must be a table (a JWK)")
    private = [member for member in _PRIVATE_JWK_MEMBERS if member in key]
    if private:
        # the private key belongs to the client alone; here it would leak through backups and the DB
        where.fail("jwks", f'keys[{index}]: holds private key material ("{private[0]}"); list only public keys')
    try:
        # one key at a time: import_key_set silently skips a key whose kty it does not know
        imported = KeySet.import_key_set({"keys": [key]})
    except Exception as exc:  # joserfc reports bad input as JoseError, ValueError, TypeError, binascii.Error…
        where.fail("jwks", f"keys[{index}]: not a valid JWK: {str(exc) or type(exc).__name__}")
    if len(imported.keys) != 1:
        where.fail("jwks", f"keys[{index}]: not a valid JWK")


def _redirect_uris(table: _Table, where: _Where, grants: tuple[str, ...], *, public: bool) -> tuple[str, ...]:
    uris = _strings(table, "redirect_uris", where, default=())
    if not uris and "authorization_code" in grants:
        where.fail("redirect_uris", "required (at least one) with grant type authorization_code")
    for index, uri in enumerate(uris):
        problem = _uri_problem(uri, private_use=True)
        if problem is None and _is_private_use(uri) and not public:
            problem = 'a private-use scheme is for native apps, which are public clients (method "none")'
        if problem:
            where.fail("redirect_uris", problem, index)
    return uris


def _audience_compat(table: _Table, where: _Where, method: str) -> bool:
    compat = _flag(table, "token_endpoint_audience_compat", where, False)
    if compat and method != "private_key_jwt":
        # client_secret_jwt, the other JWT method it would matter for, is not offered
        where.fail("token_endpoint_audience_compat", 'used only with token_endpoint_auth_method = "private_key_jwt"')
    return compat


def _require_pkce(table: _Table, where: _Where, *, public: bool) -> bool:
    required = _flag(table, "require_pkce", where, True)
    if not required and public:
        where.fail(
            "require_pkce",
            "a public client always uses PKCE (it has no secret to prove who redeems the "
            "code): remove require_pkce = false",
        )
    return required


def _origins(table: _Table, key: str, where: _Where) -> tuple[str, ...]:
    """Web origins as browsers send them in Origin: scheme://host[:port], nothing more."""
    values = _strings(table, key, where, default=())
    for index, value in enumerate(values):
        origin = origin_of(value)
        if value == "*" or origin is None:
            where.fail(
                key, f"{_show(value)} is not an origin (write scheme://host[:port], e.g. https://app.example)", index
            )
        if origin != value:
            where.fail(key, f"{_show(value)} is not an origin as browsers send it: write {_show(origin)}", index)
        if problem := _uri_problem(value, private_use=False):
            where.fail(key, problem, index)
    return values


def _https_uri(table: _Table, key: str, where: _Where) -> str | None:
    """A page or image shown to users on the consent page: https only (and no localhost)."""
    uri = _web_uri(table, key, where)
    if uri is not None and urlsplit(uri).scheme.lower() != "https":
        where.fail(key, "must be an https URI: it is shown to users on the consent page")
    return uri


def _application_type(table: _Table, where: _Where) -> str:
    """OIDC Registration §2: "web" by default; a file that registers private-use scheme
    redirects without saying so means "native" (as it always did here)."""
    uris = table.get("redirect_uris") if isinstance(table.get("redirect_uris"), list) else []
    inferred = "native" if any(isinstance(u, str) and _is_private_use(u) for u in uris) else "web"
    kind = _choice(table, "application_type", where, APPLICATION_TYPES, default=inferred, why="")
    if kind == "web" and inferred == "native":
        where.fail(
            "application_type",
            '"web" clients redirect to https or localhost; private-use scheme redirect_uris '
            'belong to application_type = "native"',
        )
    return kind


def _choice(table: _Table, key: str, where: _Where, allowed: tuple[str, ...], *, default: str, why: str) -> str:
    value = _string(table, key, where)
    if value is None:
        return default
    if value not in allowed:
        reason = f"; {why}" if why else ""
        where.fail(key, f"{_show(value)} is not supported (use {' or '.join(_show(a) for a in allowed)}){reason}")
    return value


def _seconds(table: _Table, key: str, where: _Where) -> int | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        where.fail(key, f"must be an integer number of seconds, not {_type_name(value)}")
    if not 0 <= value <= _MAX_AGE_LIMIT_SECONDS:
        where.fail(key, f"must be between 0 and {_MAX_AGE_LIMIT_SECONDS} seconds")
    return value


def _web_uris(table: _Table, key: str, where: _Where) -> tuple[str, ...]:
    uris = _strings(table, key, where, default=())
    for index, uri in enumerate(uris):
        if problem := _uri_problem(uri, private_use=False):
            where.fail(key, problem, index)
    return uris


def _web_uri(table: _Table, key: str, where: _Where) -> str | None:
    uri = _string(table, key, where)
    if uri is not None and (problem := _uri_problem(uri, private_use=False)):
        where.fail(key, problem)
    return uri


def _uri_problem(uri: str, *, private_use: bool) -> str | None:
    """Why `uri` may not be registered (RFC 6749 §3.1.2, RFC 8252 §7), or None if it may."""
    if len(uri) > _MAX_URI_CHARS:
        return f"longer than {_MAX_URI_CHARS} characters"
    if any(char <= " " or char in "\x7f\\" for char in uri):
        # browsers rewrite "\" to "/" and drop whitespace: the URI they follow would not be this one
        return "must not contain whitespace, control characters or backslashes"
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "not a valid URI"
    if not parts.scheme:
        return "must be an absolute URI"
    if "#" in uri:
        return "must not have a fragment"
    if "@" in parts.netloc:
        return "must not contain userinfo (user@host)"
    return _scheme_problem(parts.scheme.lower(), parts.hostname, private_use=private_use)


def _scheme_problem(scheme: str, host: str | None, *, private_use: bool) -> str | None:
    if scheme == "https":
        return None if host else "must name a host"
    if scheme == "http":
        # RFC 8252 §7.3 loopback: nothing but this machine can answer, so TLS adds nothing
        return None if host in _LOOPBACK_HOSTS else "http is allowed only for localhost, 127.0.0.1 and [::1]"
    if private_use and "." in scheme:
        return None  # RFC 8252 §7.1: reverse domain name, e.g. com.example.app:/cb
    native = ", or a private-use scheme like com.example.app" if private_use else ""
    return f"scheme {_show(scheme)} is not allowed (use https, http on localhost{native})"


def _is_private_use(uri: str) -> bool:
    return "." in urlsplit(uri).scheme


def _scope(table: _Table, where: _Where, grants: tuple[str, ...], wide: _FileWide) -> str:
    scope = _string(table, "scope", where)
    tokens = (scope if scope is not None else "openid profile email").split()
    for token in tokens:
        if token not in SUPPORTED_SCOPES and token not in wide.scopes:
            supported = " ".join((*SUPPORTED_SCOPES, *wide.scopes))
            where.fail(
                "scope",
                f"unsupported scope {_show(token)} (supported: {supported}; declare others in a [[scopes]] table)",
            )
    if "authorization_code" in grants and "openid" not in tokens:
        where.fail("scope", 'must include "openid": every code flow here is OpenID Connect')
    return " ".join(dict.fromkeys(tokens))


def _acr_values(table: _Table, where: _Where) -> tuple[str, ...]:
    values = _strings(table, "default_acr_values", where, default=())
    for index, value in enumerate(values):
        if value not in ACR_LADDER:
            known = ", ".join(ACR_LADDER)
            where.fail("default_acr_values", f"unknown acr {_show(value)} (known: {known})", index)
    return values


def _string(table: _Table, key: str, where: _Where) -> str | None:
    value = table.get(key)  # TOML has no null: None means absent
    if value is not None and not isinstance(value, str):
        where.fail(key, f"must be a string, not {_type_name(value)}")
    return value


def _strings(table: _Table, key: str, where: _Where, *, default: tuple[str, ...]) -> tuple[str, ...]:
    value = table.get(key)
    if value is None:
        return default
    if not isinstance(value, list):
        where.fail(key, f"must be an array of strings, not {_type_name(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            where.fail(key, f"must be a string, not {_type_name(item)}", index)
    return tuple(value)


def _flag(table: _Table, key: str, where: _Where, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        where.fail(key, f"must be true or false, not {_type_name(value)}")
    return value


def _type_name(value: Any) -> str:
    return _TOML_TYPES.get(type(value), "date/time")


def _show(value: str) -> str:
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= 60 else shown[:56] + '…"'


def _at(source: str, line: int | None) -> str:
    return f"{source}:{line}: " if line else f"{source}: "
