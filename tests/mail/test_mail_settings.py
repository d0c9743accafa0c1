"""IDP_SMTP_URL, IDP_SMTP_PASSWORD_FILE, IDP_SMTP_CA_FILE and IDP_MAIL_FROM (issue 18): mail
leaves over TLS (smtps://, or smtp:// with STARTTLS required) unless `?starttls=off` names
a loopback relay; IDP_MAIL_FROM is required with SMTP; a bad value stops start-up with a
message naming the setting, and the SMTP password is never repeated by a message or a repr."""

from __future__ import annotations

import pytest

from idp.mail.mailer import describe, smtp_target_of
from idp.settings import SettingsError, load_settings

FROM = {"IDP_MAIL_FROM": "id@example.com"}


@pytest.mark.parametrize(
    "url, described",
    [
        pytest.param("smtps://mail.example", "smtps://mail.example:465", id="smtps, default port 465"),
        pytest.param("smtp://mail.example", "smtp://mail.example:587", id="smtp with STARTTLS, default port 587"),
        pytest.param("smtp://relay:p%40ss@mail.example:2525", "smtp://mail.example:2525", id="credentials and a port"),
        pytest.param(
            "smtp://127.0.0.1:25?starttls=off", "smtp://127.0.0.1:25?starttls=off", id="starttls=off on 127.0.0.1"
        ),
        pytest.param(
            "smtp://localhost:25?starttls=off", "smtp://localhost:25?starttls=off", id="starttls=off on localhost"
        ),
        pytest.param("smtp://[::1]:25?starttls=off", "smtp://[::1]:25?starttls=off", id="starttls=off on ::1"),
    ],
)
def test_accepted_smtp_urls(url, described):
    settings = load_settings(environ={"IDP_SMTP_URL": url, **FROM})
    assert describe(settings) == f"mail via {described} from id@example.com"


@pytest.mark.parametrize(
    "environ, message",
    [
        pytest.param(
            {"IDP_SMTP_URL": "smtp://mail.example?starttls=off", **FROM},
            "IDP_SMTP_URL: ?starttls=off is allowed only for a loopback host",
            id="no STARTTLS to a host on the network",
        ),
        pytest.param(
            {"IDP_SMTP_URL": "smtp://10.0.0.5?starttls=off", **FROM},
            "IDP_SMTP_URL: ?starttls=off is allowed only for a loopback host",
            id="no STARTTLS to a private address",
        ),
        pytest.param(
            {"IDP_SMTP_URL": "smtps://mail.example?starttls=off", **FROM},
            "IDP_SMTP_URL: ?starttls=off is for smtp://",
            id="starttls=off on smtps",
        ),
        pytest.param(
            {"IDP_SMTP_URL": "smtp://mail.example?starttls=on", **FROM},
            "IDP_SMTP_URL: the only option is ?starttls=off",
            id="another option",
        ),
        pytest.param(
            {"IDP_SMTP_URL": "http://mail.example", **FROM},
            "IDP_SMTP_URL: must be an smtps:// or smtp:// URL",
            id="another scheme",
        ),
        pytest.param({"IDP_SMTP_URL": "smtps://mail.example"}, "IDP_MAIL_FROM: required", id="no From"),
        pytest.param(
            {"IDP_SMTP_URL": "smtps://mail.example", "IDP_MAIL_FROM": "idp"},
            "IDP_MAIL_FROM: 'idp' is not an e-mail address",
            id="From not an address",
        ),
        pytest.param(
            {"IDP_SMTP_URL": "smtps://mail.example", "IDP_MAIL_FROM": "a@example.com, b@example.com"},
            "IDP_MAIL_FROM: must be one address",
            id="From two addresses",
        ),
        pytest.param(
            {"IDP_SMTP_URL": "smtps://mail.example", "IDP_MAIL_FROM": "ID <id@example.com>\r\nBcc: x@evil.example"},
            "IDP_MAIL_FROM: must be one line",
            id="From with a line break",
        ),
        pytest.param(
            {"IDP_SMTP_PASSWORD_FILE": "/run/secrets/smtp"},
            "IDP_SMTP_PASSWORD_FILE: set without IDP_SMTP_URL",
            id="password file without SMTP",
        ),
        pytest.param(
            {"IDP_SMTP_URL": "smtps://u:pw@mail.example", "IDP_SMTP_PASSWORD_FILE": "/run/secrets/smtp", **FROM},
            "IDP_SMTP_PASSWORD_FILE: needs IDP_SMTP_URL to name a user and no password",
            id="password twice",
        ),
        pytest.param(
            {"IDP_SMTP_URL": "smtps://mail.example", "IDP_SMTP_CA_FILE": "/nonexistent/ca.pem", **FROM},
            "IDP_SMTP_CA_FILE: /nonexistent/ca.pem is not a file",
            id="CA file missing",
        ),
    ],
)
def test_refused_mail_settings_name_the_setting(environ, message):
    with pytest.raises(SettingsError) as refused:
        load_settings(environ=environ)
    assert str(refused.value).startswith(message)


def test_the_smtp_password_is_in_no_message_and_no_repr():
    with pytest.raises(SettingsError) as refused:
        load_settings(environ={"IDP_SMTP_URL": "smtp://relay:hunter2-secret@mail.example?starttls=off", **FROM})
    assert "hunter2" not in str(refused.value)

    settings = load_settings(environ={"IDP_SMTP_URL": "smtps://relay:hunter2-secret@mail.example", **FROM})
    target = smtp_target_of(settings)
    assert target.password == "hunter2-secret"
    assert "hunter2" not in repr(settings) and "hunter2" not in repr(target) and "hunter2" not in describe(settings)


def test_the_password_file_supplies_the_password(tmp_path):
    secret = tmp_path / "smtp-password"
    secret.write_text("from-the-file\n")
    settings = load_settings(
        environ={"IDP_SMTP_URL": "smtps://relay@mail.example", "IDP_SMTP_PASSWORD_FILE": str(secret), **FROM}
    )
    target = smtp_target_of(settings)
    assert (target.username, target.password) == ("relay", "from-the-file")


def test_without_smtp_mail_is_off_and_says_so():
    assert describe(load_settings(environ={})) == "mail off (IDP_SMTP_URL is not set): no notices are sent"
