"""X-Forwarded-For is believed only from trusted proxies (predecessor fix F-03)."""
from __future__ import annotations

import pytest

from idp.security.client_ip import client_ip, parse_networks

PROXIES = parse_networks(["10.0.0.0/8"])


@pytest.mark.parametrize("peer, forwarded, trusted, expected", [
    pytest.param("203.0.113.9", "1.2.3.4", PROXIES, "203.0.113.9", id="ignores the header from an untrusted peer"),
    pytest.param("10.0.0.5", "1.2.3.4", (), "10.0.0.5", id="ignores the header when no proxy is trusted"),
    pytest.param("10.0.0.5", "198.51.100.7", PROXIES, "198.51.100.7", id="believes a trusted proxy"),
    pytest.param("10.0.0.5", "6.6.6.6, 198.51.100.7, 10.0.0.9", PROXIES, "198.51.100.7",
                 id="takes the first untrusted hop from the right, not a spoofed leftmost value"),
    pytest.param("10.0.0.5", "not-an-ip", PROXIES, "10.0.0.5", id="falls back to the peer on garbage"),
    pytest.param("10.0.0.5", None, PROXIES, "10.0.0.5", id="uses the peer without the header"),
])
def test_client_ip_trusts_forwarded_for_only_from_trusted_proxies(peer, forwarded, trusted, expected):
    assert client_ip(peer, forwarded, trusted) == expected
