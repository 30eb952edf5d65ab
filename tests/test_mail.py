"""The mailer: outbox files without CORTEX_SMTP_URL, real delivery to a local aiosmtpd server with it."""

from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
import re
import socket
import ssl
import stat
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cortex.integrations.mail import Mailer, MailError, read_outbox

FROM = "Cortex <cortex@example.org>"
USER = "mailer@example.org"
PASSWORD = "s3cret:p@ss/word"
QUOTED_USER = "mailer%40example.org"
QUOTED_PASSWORD = "s3cret%3Ap%40ss%2Fword"


# --- outbox mode -------------------------------------------------------------------------------------------


def test_outbox_writes_parseable_eml(tmp_path):
    mailer = Mailer.from_settings(None, FROM, tmp_path)
    assert mailer.uses_outbox and mailer.outbox_dir == tmp_path / "outbox"
    message_id = mailer.send("Ada <ada@example.com>", "Welcome", "Hello Ada,\nwelcome aboard.\n")

    files = list(mailer.outbox_dir.iterdir())
    assert len(files) == 1
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{6}-[0-9a-f]{8}\.eml", files[0].name)
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    [message] = read_outbox(tmp_path)
    assert message["From"] == FROM
    assert message["To"] == "Ada <ada@example.com>"
    assert message["Subject"] == "Welcome"
    assert message["Message-ID"] == message_id
    assert re.fullmatch(r"<[^@<>]+@example\.org>", message_id)
    assert message["Date"].datetime.utcoffset() == datetime.timedelta(0)
    assert abs(message["Date"].datetime - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(minutes=1)
    assert not message.is_multipart()
    assert message.get_content_type() == "text/plain"
    assert message.get_content() == "Hello Ada,\nwelcome aboard.\n"


def test_outbox_html_alternative_headers_and_several_recipients(tmp_path):
    mailer = Mailer.from_settings("", "cortex@localhost", tmp_path)
    mailer.send(
        ["ada@example.com", "Bob Ünicode <bob@example.com>"],
        "Grüße",
        "plain body",
        html="<p>html body</p>",
        headers={"Reply-To": "support@example.org", "X-Cortex-Event": "invite"},
    )
    [message] = read_outbox(tmp_path)
    assert message["To"] == "ada@example.com, Bob Ünicode <bob@example.com>"
    assert message["Subject"] == "Grüße"
    assert message["Reply-To"] == "support@example.org"
    assert message["X-Cortex-Event"] == "invite"
    assert message["Message-ID"].endswith("@localhost>")
    assert message.get_content_type() == "multipart/alternative"
    assert message.get_body(("plain",)).get_content() == "plain body\n"
    assert message.get_body(("html",)).get_content() == "<p>html body</p>\n"


def test_read_outbox_is_oldest_first_and_ignores_temporaries(tmp_path):
    mailer = Mailer.from_settings(None, FROM, tmp_path)
    assert read_outbox(tmp_path) == []
    ids = [mailer.send("ada@example.com", f"message {n}", "body") for n in range(5)]
    (mailer.outbox_dir / ".half-written.eml.tmp").write_bytes(b"garbage")
    assert [message["Message-ID"] for message in read_outbox(tmp_path)] == ids


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    mailer = Mailer.from_settings(None, FROM, tmp_path)
    with pytest.raises(ValueError):
        mailer.send("ada@example.com", "Hi\r\nBcc: everyone@example.com", "body")
    with pytest.raises(ValueError, match="recipient"):
        mailer.send([], "Hi", "body")
    with pytest.raises(ValueError, match="recipient"):
        mailer.send("not an address", "Hi", "body")
    with pytest.raises(ValueError, match="CORTEX_MAIL_FROM"):
        Mailer.from_settings(None, "nobody", tmp_path)
    assert read_outbox(tmp_path) == []


# --- URL parsing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example.org", dict(scheme="smtp", host="mail.example.org", port=25, starttls=False)),
        ("smtp://mail.example.org:2525", dict(port=2525, username=None, password=None)),
        (
            f"smtp://{QUOTED_USER}:{QUOTED_PASSWORD}@mail.example.org:587?starttls=true",
            dict(port=587, starttls=True, username=USER, password=PASSWORD, verify=True, timeout=10.0),
        ),
        ("smtp://h?starttls=YES&timeout=2.5", dict(starttls=True, timeout=2.5)),
        ("smtp://h?starttls=1&verify=false", dict(starttls=True, verify=False)),
        ("SMTPS://u:p@h", dict(scheme="smtps", port=465, username="u", password="p", starttls=False)),
        ("smtps://h:10465?verify=0", dict(port=10465, verify=False)),
    ],
)
def test_url_forms(tmp_path, url, expected):
    mailer = Mailer.from_settings(url, FROM, tmp_path)
    assert not mailer.uses_outbox
    assert {name: getattr(mailer, name) for name in expected} == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://mail.example.org", "unsupported scheme 'http'"),
        ("mail.example.org:25", "unsupported scheme"),
        ("smtp://", "no host"),
        ("smtp://h:notaport", "invalid port"),
        ("smtp://h?starttls=maybe", "starttls='maybe' is not a boolean"),
        ("smtp://h?tls=true", "unknown option"),
        ("smtp://h?timeout=-1", "timeout"),
        ("smtp://h?timeout=soon", "timeout"),
        ("smtps://h?starttls=true", "starttls applies to smtp://"),
    ],
)
def test_bad_urls_raise_value_error(tmp_path, url, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Mailer.from_settings(url, FROM, tmp_path)


def test_password_stays_out_of_errors_and_repr(tmp_path):
    with pytest.raises(ValueError) as raised:
        Mailer.from_settings("ftp://user:hunter22@h", FROM, tmp_path)
    assert "hunter22" not in str(raised.value) and "user:***@h" in str(raised.value)
    assert "hunter22" not in repr(Mailer.from_settings("smtp://user:hunter22@h", FROM, tmp_path))


# --- real SMTP -----------------------------------------------------------------------------------------------


class Collector:
    """aiosmtpd handler keeping every accepted envelope with its session's TLS/AUTH state."""

    def __init__(self):
        self.received = []

    async def handle_DATA(self, server, session, envelope):
        self.received.append(
            dict(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                content=envelope.original_content,
                # session.ssl is set by STARTTLS only; an implicit-TLS transport carries the SSL object
                tls=session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None,
                auth_data=session.auth_data,
                authenticated=session.authenticated,
            )
        )
        return "250 OK"


def authenticator(server, session, envelope, mechanism, auth_data):
    """Accept exactly USER / PASSWORD (AUTH PLAIN or LOGIN)."""
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False, auth_data=auth_data.login if ok else None)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (right now)."""
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def smtp_server(**options):
    """A local aiosmtpd server on a free port; yields (port, collector) and always stops it."""
    collector = Collector()
    controller = Controller(
        collector, hostname="127.0.0.1", port=free_port(), server_hostname="localhost", ready_timeout=5, **options
    )
    controller.start()
    try:
        yield controller.port, collector
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory) -> ssl.SSLContext:
    """Server-side TLS context with a throwaway self-signed certificate for localhost / 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory: Path = tmp_path_factory.mktemp("tls")
    (directory / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


def received_message(entry):
    """Parse what the server received (CRLF line ends made LF) with the policy read_outbox uses."""
    return email.message_from_bytes(entry["content"].replace(b"\r\n", b"\n"), policy=email.policy.default)


def test_plain_smtp_delivery(tmp_path):
    with smtp_server() as (port, collector):
        mailer = Mailer.from_settings(f"smtp://127.0.0.1:{port}?timeout=3", FROM, tmp_path)
        message_id = mailer.send(
            ["ada@example.com", "Bob <bob@example.com>"], "Hello", "text part", html="<b>html part</b>"
        )
    [entry] = collector.received
    assert entry["mail_from"] == "cortex@example.org"
    assert entry["rcpt_tos"] == ["ada@example.com", "bob@example.com"]
    assert not entry["tls"] and not entry["authenticated"]
    message = received_message(entry)
    assert message["Message-ID"] == message_id
    assert message["Subject"] == "Hello" and message["From"] == FROM
    assert message.get_body(("plain",)).get_content() == "text part\n"
    assert message.get_body(("html",)).get_content() == "<b>html part</b>\n"
    assert not mailer.outbox_dir.exists()


def test_smtp_auth_with_percent_encoded_credentials(tmp_path):
    with smtp_server(authenticator=authenticator, auth_require_tls=False) as (port, collector):
        url = f"smtp://{QUOTED_USER}:{QUOTED_PASSWORD}@127.0.0.1:{port}?timeout=3"
        Mailer.from_settings(url, FROM, tmp_path).send("ada@example.com", "Authenticated", "body")
        wrong = f"smtp://{QUOTED_USER}:wrong-{QUOTED_PASSWORD}@127.0.0.1:{port}?timeout=3"
        with pytest.raises(MailError, match="SMTPAuthenticationError") as raised:
            Mailer.from_settings(wrong, FROM, tmp_path).send("ada@example.com", "Refused", "body")
    assert PASSWORD not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # no chained server reply
    [entry] = collector.received
    assert entry["authenticated"] and entry["auth_data"] == USER.encode()


def test_starttls_delivery(tmp_path, server_tls):
    options = dict(tls_context=server_tls, require_starttls=True, authenticator=authenticator)
    with smtp_server(**options) as (port, collector):
        url = f"smtp://{QUOTED_USER}:{QUOTED_PASSWORD}@localhost:{port}?starttls=true&verify=false&timeout=3"
        message_id = Mailer.from_settings(url, FROM, tmp_path).send("ada@example.com", "Over TLS", "secret body")
        # Without verify=false the self-signed certificate is rejected.
        strict = f"smtp://127.0.0.1:{port}?starttls=true&timeout=3"
        with pytest.raises(MailError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            Mailer.from_settings(strict, FROM, tmp_path).send("ada@example.com", "Refused", "body")
        # The server requires STARTTLS, so a plain session is refused.
        with pytest.raises(MailError):
            Mailer.from_settings(f"smtp://127.0.0.1:{port}?timeout=3", FROM, tmp_path).send("a@b.c", "x", "y")
    [entry] = collector.received
    assert entry["tls"] and entry["authenticated"]
    assert received_message(entry)["Message-ID"] == message_id


def test_smtps_implicit_tls_delivery(tmp_path, server_tls):
    with smtp_server(ssl_context=server_tls) as (port, collector):
        url = f"smtps://127.0.0.1:{port}?verify=false&timeout=3"
        Mailer.from_settings(url, FROM, tmp_path).send("ada@example.com", "Implicit TLS", "body")
        with pytest.raises(MailError, match="certificate verify failed|CERTIFICATE_VERIFY_FAILED"):
            Mailer.from_settings(f"smtps://127.0.0.1:{port}?timeout=3", FROM, tmp_path).send("a@b.c", "x", "y")
    [entry] = collector.received
    assert entry["tls"] and entry["rcpt_tos"] == ["ada@example.com"]
    # The controller's own start-up probe also connects; only our message reached DATA.
    assert received_message(entry)["Subject"] == "Implicit TLS"


def test_connection_refused_raises_mail_error(tmp_path):
    mailer = Mailer.from_settings(f"smtp://u:{QUOTED_PASSWORD}@127.0.0.1:{free_port()}?timeout=2", FROM, tmp_path)
    with pytest.raises(MailError, match="ConnectionRefusedError") as raised:
        mailer.send("ada@example.com", "Hi", "body")
    assert PASSWORD not in str(raised.value)
    assert not mailer.outbox_dir.exists()


def test_silent_server_times_out(tmp_path):
    with closing(socket.socket()) as listener:  # accepts connections (backlog) but never greets
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        mailer = Mailer.from_settings(f"smtp://127.0.0.1:{port}?timeout=0.3", FROM, tmp_path)
        with pytest.raises(MailError, match="timed out"):
            mailer.send("ada@example.com", "Hi", "body")
