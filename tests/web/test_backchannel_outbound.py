"""Back-channel logout goes out only to IDP_OUTBOUND_ALLOWED_NETWORKS (issue 16): a
backchannel_logout_uri at a disallowed address is refused without a connection, and the
refusal is audited like any failed delivery."""

from __future__ import annotations

import dataclasses

from sqlalchemy import select, update

from idp.db.models import AuditEvent, Client, User
from idp.login.sessions import EndedSession
from idp.security.outbound import OutboundPolicy
from idp.web.backchannel import Sender, deliver_all
from tests.support.loopback_http import answering, loopback_server

RFC1918 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")


def test_backchannel_logout_to_a_disallowed_address_is_refused_and_audited(client):
    """SSRF through registration: a backchannel_logout_uri on idp's own host (loopback, not
    listed) gets no POST; the delivery fails at once, is not retried, and is audited."""
    services = client.app.state.services
    with loopback_server(answering(200)) as rp, services.sessions.begin() as db:
        row = db.scalar(select(Client).where(Client.client_id == "shop"))
        config = {**row.config, "backchannel_logout_uri": rp.url("/backchannel-logout")}
        db.execute(update(Client).where(Client.id == row.id).values(config=config))
        alice = db.scalar(select(User).where(User.username == "alice"))
        ended = EndedSession(user_id=alice.id, sid="sid-1", subject=alice.subject, clients=("shop",))
    services.oidc.clients.reload()
    without_loopback = dataclasses.replace(services.outbound, policy=OutboundPolicy.of(RFC1918))
    sender = dataclasses.replace(Sender.of(services), outbound=without_loopback)

    [delivered] = client.portal.call(deliver_all, sender, [ended])

    assert delivered.outcome == "failure" and delivered.detail.startswith("refused")
    assert rp.connections == 0
    with services.sessions() as db:
        [event] = db.scalars(select(AuditEvent).where(AuditEvent.kind == "logout.backchannel")).all()
        assert (event.client_id, event.outcome) == ("shop", "failure")
        assert event.detail["result"].startswith("refused") and event.detail["sid"] == "sid-1"
