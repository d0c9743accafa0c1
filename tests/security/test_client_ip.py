"""X-Forwarded-For is believed only from trusted proxies (predecessor fix F-03)."""

from __future__ import annotations

import pytest

from idp.security.client_ip import client_ip, joined_forwarded_for, parse_networks

PROXIES = parse_networks(["10.0.0.0/8"])


@pytest.mark.parametrize(
    "peer, forwarded, trusted, expected",
    [
        pytest.param("203.0.113.9", "1.2.3.4", PROXIES, "203.0.113.9", id="ignores the header from an untrusted peer"),
        pytest.param("10.0.0.5", "1.2.3.4", (), "10.0.0.5", id="ignores the header when no proxy is trusted"),
        pytest.param("10.0.0.5", "198.51.100.7", PROXIES, "198.51.100.7", id="believes a trusted proxy"),
        pytest.param(
            "10.0.0.5",
            "6.6.6.6, 198.51.100.7, 10.0.0.9",
            PROXIES,
            "198.51.100.7",
            id="takes the first untrusted hop from the right, not a spoofed leftmost value",
        ),
        pytest.param("10.0.0.5", "not-an-ip", PROXIES, "10.0.0.5", id="falls back to the peer on garbage"),
        pytest.param("10.0.0.5", None, PROXIES, "10.0.0.5", id="uses the peer without the header"),
    ],
)
def test_client_ip_trusts_forwarded_for_only_from_trusted_proxies(peer, forwarded, trusted, expected):
    assert client_ip(peer, forwarded, trusted) == expected


def test_a_long_forged_list_cannot_push_the_real_address_out_of_the_window():
    """The proxy appends the real client last; twenty or more entries written by the client
    in front of it must not make one of them the recorded address."""
    forged = ", ".join(f"198.51.100.{i}" for i in range(25))
    assert client_ip("10.0.0.5", f"{forged}, 203.0.113.7", PROXIES) == "203.0.113.7"
    assert client_ip("10.0.0.5", f"{forged}, 203.0.113.7, 10.0.0.9", PROXIES) == "203.0.113.7"


def test_several_header_lines_are_one_list_in_order():
    """A client's own X-Forwarded-For line in front of the line a proxy added (HAProxy's
    `option forwardfor`) is read with it, so the proxy's entry is the nearest hop."""
    joined = joined_forwarded_for(["127.0.0.1", "203.0.113.7"])
    assert joined == "127.0.0.1, 203.0.113.7"
    assert client_ip("10.0.0.5", joined, PROXIES) == "203.0.113.7"
    assert joined_forwarded_for([]) is None
