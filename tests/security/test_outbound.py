"""Outbound calls (idp/security/outbound.py; issue 16): only to IDP_OUTBOUND_ALLOWED_NETWORKS,
judged on the address connected to, with no proxy from the environment, no redirects, one
total deadline and a capped body. Real servers on loopback; the resolver is the module's seam."""

from __future__ import annotations

import asyncio
import time

import pytest

from idp.security.outbound import MAX_BODY_BYTES, Outbound, OutboundError, OutboundPolicy, OutboundRefused
from tests.support.loopback_http import answering, dripping, endless, loopback_server, wait_until

RFC1918 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
JWKS = {"keys": []}


@pytest.mark.parametrize(
    ("listed", "address", "allowed"),
    [
        pytest.param(RFC1918, "10.1.2.3", True, id="allows an RFC 1918 address by default"),
        pytest.param(RFC1918, "fd00::1", True, id="allows a unique local IPv6 address by default"),
        pytest.param(RFC1918, "203.0.113.9", False, id="refuses a public address not listed"),
        pytest.param(RFC1918, "169.254.169.254", False, id="refuses the cloud metadata address"),
        pytest.param(RFC1918, "127.0.0.1", False, id="refuses loopback"),
        pytest.param(("0.0.0.0/0", "::/0"), "169.254.169.254", False, id="0.0.0.0/0 does not open link-local"),
        pytest.param(("0.0.0.0/0", "::/0"), "127.0.0.1", False, id="0.0.0.0/0 does not open loopback"),
        pytest.param(("0.0.0.0/0", "::/0"), "0.0.0.0", False, id="0.0.0.0/0 does not open this host"),
        pytest.param(("0.0.0.0/0", "::/0"), "::1", False, id="::/0 does not open IPv6 loopback"),
        pytest.param(("0.0.0.0/0", "::/0"), "fe80::1", False, id="::/0 does not open IPv6 link-local"),
        pytest.param(("0.0.0.0/0",), "::ffff:127.0.0.1", False, id="an IPv4-mapped loopback is loopback"),
        pytest.param(("0.0.0.0/0",), "203.0.113.9", True, id="0.0.0.0/0 opens public addresses"),
        pytest.param(("169.254.169.254/32",), "169.254.169.254", True, id="link-local when listed itself"),
        pytest.param(("127.0.0.0/8",), "127.0.0.1", True, id="loopback when listed itself"),
    ],
)
def test_the_policy_refuses_loopback_and_link_local_unless_listed_inside_them(listed, address, allowed):
    assert OutboundPolicy.of(listed).allows(address) is allowed


def test_the_cloud_metadata_address_is_refused_without_a_connection_attempt():
    """SSRF to 169.254.169.254 (instance credentials): refused before any socket is opened."""
    outbound = Outbound(OutboundPolicy.of(("0.0.0.0/0",)))
    started = time.monotonic()
    with pytest.raises(OutboundRefused):
        outbound.get("http://169.254.169.254/latest/meta-data/iam/security-credentials/")
    assert time.monotonic() - started < 0.5


def test_loopback_is_refused_unless_listed_and_nothing_connects():
    """SSRF to a service on idp's own host (an admin port, Redis): no connection is made."""
    with loopback_server(answering(200, JWKS)) as server:
        with pytest.raises(OutboundRefused):
            Outbound(OutboundPolicy.of(RFC1918)).get(server.url())
        assert server.connections == 0
        assert Outbound(OutboundPolicy.of(RFC1918, loopback=True)).get(server.url()).status == 200


def test_a_name_resolving_to_a_disallowed_address_is_refused_at_connect_time():
    outbound = Outbound(OutboundPolicy.of(("0.0.0.0/0",)), resolve=lambda host, port: ["169.254.169.254"])
    with pytest.raises(OutboundRefused):
        outbound.get("http://metadata.rp.test/jwks")


def test_dns_rebinding_cannot_redirect_the_connection_from_the_checked_address():
    """DNS rebinding: the name answers an allowed address to the check and another one after
    it. idp looks the name up once per connection and connects to the very address it
    checked; the second answer is checked in its turn and refused."""
    answers = iter([["127.0.0.1"], ["127.0.0.2"], ["127.0.0.2"]])
    lookups: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        lookups.append(host)
        return next(answers)

    outbound = Outbound(OutboundPolicy.of(("127.0.0.1/32",)), resolve=rebinding)
    with loopback_server(answering(200, JWKS)) as checked:
        with loopback_server(answering(200, {"keys": ["internal"]}), host="127.0.0.2", port=checked.port) as internal:
            reply = outbound.get(checked.url(host="rp.test"))
            assert reply.status == 200 and reply.body == b'{"keys": []}'
            assert lookups == ["rp.test"]  # one lookup, and the connection used its answer
            assert checked.heads[0].splitlines()[1].lower() == f"host: rp.test:{checked.port}"  # the URL's name
            with pytest.raises(OutboundRefused):
                outbound.get(checked.url(host="rp.test"))
            assert internal.connections == 0


def test_redirects_are_not_followed():
    """A redirect to an internal address would launder an SSRF: idp never follows one."""
    with loopback_server(answering(200, JWKS)) as target:
        with loopback_server(answering(302, b"", {"location": target.url()})) as redirecting:
            reply = Outbound(OutboundPolicy.of((), loopback=True)).get(redirecting.url())
            assert reply.status == 302
            assert target.connections == 0


def test_an_endless_body_is_cut_off_at_the_cap_and_the_connection_closed():
    """Memory exhaustion by an endless jwks_uri body: reading stops past 64 KiB."""
    with loopback_server(endless) as server:
        with pytest.raises(OutboundRefused):
            Outbound(OutboundPolicy.of((), loopback=True)).get(server.url())
        assert wait_until(server.closed_early.is_set, timeout=5)
        assert server.bytes_sent < 16 * MAX_BODY_BYTES  # what the socket buffers took, not more


def test_a_declared_oversize_body_is_refused_before_reading_it():
    with loopback_server(answering(200, b"x" * (MAX_BODY_BYTES + 1))) as server:
        with pytest.raises(OutboundRefused):
            Outbound(OutboundPolicy.of((), loopback=True)).get(server.url())


def test_a_dripping_answer_is_cut_at_the_total_deadline():
    """Slow loris in reverse: one byte at a time keeps each read under its timeout; the
    request as a whole still ends at its deadline."""
    with loopback_server(dripping) as server:
        outbound = Outbound(OutboundPolicy.of((), loopback=True), total_seconds=1.0)
        started = time.monotonic()
        with pytest.raises(OutboundError):
            outbound.get(server.url())
        assert time.monotonic() - started < 1.5


def test_proxy_settings_in_the_environment_are_ignored(monkeypatch):
    """HTTPS_PROXY/HTTP_PROXY/ALL_PROXY in idp's environment must not route its calls (nor see
    the logout tokens it posts): requests go straight to the RP."""
    with loopback_server(answering(200, JWKS)) as rp, loopback_server(answering(200, JWKS)) as proxy:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(name, proxy.url("/"))
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        outbound = Outbound(OutboundPolicy.of((), loopback=True))
        assert outbound.get(rp.url()).status == 200
        assert asyncio.run(outbound.post_form(rp.url("/logout"), {"logout_token": "t"})).status == 200
        assert (rp.connections, proxy.connections) == (2, 0)


def test_a_post_to_a_disallowed_address_is_refused():
    with loopback_server(answering(200)) as server:
        with pytest.raises(OutboundRefused):
            asyncio.run(Outbound(OutboundPolicy.of(RFC1918)).post_form(server.url("/logout"), {"logout_token": "t"}))
        assert server.connections == 0


def test_find_refusal_names_an_address_outside_the_list_for_the_admin():
    outbound = Outbound(OutboundPolicy.of(RFC1918), resolve=lambda host, port: ["169.254.169.254"])
    assert "169.254.169.254" in (outbound.find_refusal("https://keys.rp.test/jwks") or "")
    assert Outbound(OutboundPolicy.of(RFC1918)).find_refusal("https://10.0.0.8/jwks") is None
