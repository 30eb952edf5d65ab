"""Outgoing mail: one ``Mailer`` every feature uses, over SMTP or into a local outbox directory.

``CORTEX_SMTP_URL`` selects the transport:

* ``smtp://host[:port]`` — plain SMTP (port 25 by default);
* ``smtp://user:pass@host:587?starttls=true`` — upgrade with STARTTLS (``starttls=true|1|yes``);
* ``smtps://user:pass@host[:465]`` — implicit TLS from the first byte (port 465 by default).

User name and password are percent-decoded (write ``@`` as ``%40``, ``:`` as ``%3A``). Query options:
``timeout=<seconds>`` (default 10) bounds connecting and every command; ``verify=false`` turns off
certificate and host-name checks — **only for local testing** against a self-signed server, never in
production. TLS otherwise uses ``ssl.create_default_context()`` (system CAs, host name checked).

Without ``CORTEX_SMTP_URL`` nothing leaves the machine: each message is written as an ``.eml`` file to
``<data_dir>/outbox/`` (readable with any mail client, or with :func:`read_outbox`), which is what
development and the test suite use. Every message opens a fresh connection, so one ``Mailer`` is safe to
share between threads and greenlets.

Features do not call :meth:`Mailer.send` while handling a request: they queue the message in the durable
outbox table (``models.mail.queue_mail``, in the transaction of the change), and the mail engine
(``cortex.engines.mail``) sends it with this mailer, retrying until the server takes it.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import logging
import os
import smtplib
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from secrets import token_hex
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger(__name__)

_DEFAULT_PORTS = {"smtp": 25, "smtps": 465}
_DEFAULT_TIMEOUT = 10.0
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_QUERY_OPTIONS = {"starttls", "timeout", "verify"}


class MailError(Exception):
    """A message could not be delivered (connection, TLS, authentication or SMTP refusal)."""


#: An attachment: (file name, content type — parameters allowed, e.g. ``text/calendar; method=REQUEST`` —,
#: content).
Attachment = tuple[str, str, bytes]


@dataclass(frozen=True)
class Mailer:
    """Sends mail through the configured SMTP server, or into the outbox directory when there is none."""

    mail_from: str
    data_dir: Path
    scheme: str | None = None  # None → outbox mode
    host: str = ""
    port: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = False
    verify: bool = True
    timeout: float = _DEFAULT_TIMEOUT

    @classmethod
    def from_settings(cls, smtp_url: str | None, mail_from: str, data_dir: Path) -> Mailer:
        """Build a mailer from ``CORTEX_SMTP_URL``, ``CORTEX_MAIL_FROM`` and the data dir (ValueError if invalid)."""
        if not _address(mail_from):
            raise ValueError(f"CORTEX_MAIL_FROM {mail_from!r} holds no e-mail address")
        data_dir = Path(data_dir)
        if not smtp_url:
            return cls(mail_from=mail_from, data_dir=data_dir)
        return cls(mail_from=mail_from, data_dir=data_dir, **_parse_url(smtp_url))

    @property
    def outbox_dir(self) -> Path:
        """Directory that receives ``.eml`` files when no SMTP server is configured."""
        return self.data_dir / "outbox"

    @property
    def uses_outbox(self) -> bool:
        """True when messages are written to the outbox instead of being sent."""
        return self.scheme is None

    def send(
        self,
        to: str | list[str],
        subject: str,
        text: str,
        html: str | None = None,
        headers: dict | None = None,
        attachments: Sequence[Attachment] = (),
        message_id: str | None = None,
    ) -> str:
        """Send one message (plain text, optional HTML alternative, optional attachments) and return its
        Message-ID (``message_id`` when given: a queued message keeps one across its attempts)."""
        message, recipients = self.build(to, subject, text, html=html, headers=headers, attachments=attachments,
                                         message_id=message_id)
        if self.scheme is None:
            path = self._write_outbox(message)
            log.info("mail %s to %s written to %s", message["Message-ID"], ", ".join(recipients), path)
        else:
            self._deliver(message, recipients)
            log.info("mail %s sent to %s via %s", message["Message-ID"], ", ".join(recipients), self.host)
        return message["Message-ID"]

    def build(
        self,
        to: str | list[str],
        subject: str,
        text: str,
        html: str | None = None,
        headers: dict | None = None,
        attachments: Sequence[Attachment] = (),
        message_id: str | None = None,
    ) -> tuple[EmailMessage, list[str]]:
        """Compose the message and its envelope recipients without sending (ValueError on bad input).

        With attachments the message is ``multipart/mixed``: the text (or text/HTML alternative) first, then
        each attachment (base64)."""
        to_list = [to] if isinstance(to, str) else list(to)
        recipients = [_address(entry) for entry in to_list]
        if not recipients or not all(recipients):
            raise ValueError(f"no usable recipient address in {to!r}")
        message = EmailMessage()  # policy.default: header values with CR/LF are refused (no header injection)
        message["From"] = self.mail_from
        message["To"] = ", ".join(to_list)
        message["Subject"] = subject
        message["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = message_id or email.utils.make_msgid(domain=_domain(self.mail_from))
        for name, value in (headers or {}).items():
            if name in message:
                message.replace_header(name, value)
            else:
                message[name] = value
        message.set_content(text)
        if html is not None:
            message.add_alternative(html, subtype="html")
        for filename, content_type, content in attachments:
            parsed = email.policy.default.header_factory("Content-Type", content_type)
            if parsed.defects or "/" not in content_type or parsed.maintype in ("multipart", "message"):
                raise ValueError(f"attachment {filename!r}: {content_type!r} is not a content type")
            message.add_attachment(bytes(content), maintype=parsed.maintype, subtype=parsed.subtype,
                                   filename=filename, params=dict(parsed.params))
        return message, recipients

    def message_id_for(self, key: str) -> str:
        """A Message-ID derived from ``key`` (e.g. an outbox row id), under the sender's domain: the same on
        every attempt to send that message."""
        return f"<{key}@{_domain(self.mail_from)}>"

    def _tls_context(self) -> ssl.SSLContext:
        """The TLS context for STARTTLS / SMTPS (verification off only with ``verify=false``)."""
        context = ssl.create_default_context()
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _deliver(self, message: EmailMessage, recipients: list[str]) -> None:
        """Hand the message to the SMTP server; MailError on any failure, the connection always closed."""
        client: smtplib.SMTP | None = None
        try:
            # Connecting in the constructor records the host name TLS verifies (SNI + certificate check);
            # smtplib closes its socket itself when the connection or the greeting fails there.
            if self.scheme == "smtps":
                client = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self._tls_context())
            else:
                client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            if self.starttls:
                client.starttls(context=self._tls_context())
            if self.username is not None:
                client.login(self.username, self.password or "")
            refused = client.send_message(message, from_addr=_address(self.mail_from), to_addrs=recipients)
        except (smtplib.SMTPException, OSError, UnicodeError) as exc:
            reason = self._redact(f"{type(exc).__name__}: {exc}")
            if client is not None:
                client.close()
            # No exception chaining: the server's reply might echo credentials back.
            raise MailError(f"sending mail via {self.scheme}://{self.host}:{self.port} failed: {reason}") from None
        try:
            client.quit()  # the message is accepted already: a failing QUIT is not a delivery failure
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            client.close()
        if refused:  # some (not all) recipients refused; the others got the message
            log.warning("mail %s refused for %s", message["Message-ID"], self._redact(str(refused)))

    def _redact(self, text: str) -> str:
        """Remove the SMTP password from a text that is about to be logged or raised."""
        if self.password:
            text = text.replace(self.password, "***")
        return text

    def _write_outbox(self, message: EmailMessage) -> Path:
        """Write the message atomically as ``<outbox>/<UTC timestamp>-<random>.eml``."""
        outbox = self.outbox_dir
        outbox.mkdir(parents=True, exist_ok=True)
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%S.%f}-{token_hex(4)}.eml"
        # mkstemp creates the file 0600 — messages may carry sign-in links. Readers only glob *.eml.
        fd, temporary = tempfile.mkstemp(dir=outbox, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(bytes(message))
            os.replace(temporary, outbox / name)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return outbox / name


def read_outbox(data_dir: Path) -> list[EmailMessage]:
    """Parse every ``.eml`` file of ``<data_dir>/outbox``, oldest first (empty list when there is none)."""
    outbox = Path(data_dir) / "outbox"
    if not outbox.is_dir():
        return []
    return [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in sorted(outbox.glob("[!.]*.eml"))
    ]


def _address(value: str) -> str:
    """The bare address of ``"Name <user@host>"`` or ``"user@host"`` ('' when there is none)."""
    address = email.utils.parseaddr(value)[1]
    return address if "@" in address else ""


def _domain(mail_from: str) -> str:
    """The domain Message-IDs are minted under: the sender's."""
    return _address(mail_from).rpartition("@")[2] or "localhost"


def _redact_url(url: str) -> str:
    """The URL with its password replaced, safe for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return parts._replace(netloc=f"{user}:***@{netloc[2]}").geturl()


def _flag(name: str, value: str, url: str) -> bool:
    """Parse a boolean query option strictly, so a typo is not silently read as false."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"CORTEX_SMTP_URL {_redact_url(url)!r}: {name}={value!r} is not a boolean (true/false)")


def _parse_url(url: str) -> dict:
    """Split ``CORTEX_SMTP_URL`` into Mailer fields (ValueError with a clear message when invalid)."""
    shown = _redact_url(url)
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(
            f"CORTEX_SMTP_URL {shown!r}: unsupported scheme {parts.scheme!r} "
            "(use smtp://host[:port][?starttls=true] or smtps://host[:port])"
        )
    if not parts.hostname:
        raise ValueError(f"CORTEX_SMTP_URL {shown!r}: no host")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError(f"CORTEX_SMTP_URL {shown!r}: invalid port") from None
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - _QUERY_OPTIONS)
    if unknown:
        raise ValueError(
            f"CORTEX_SMTP_URL {shown!r}: unknown option(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(_QUERY_OPTIONS))})"
        )
    options = {name: values[-1] for name, values in query.items()}
    starttls = _flag("starttls", options["starttls"], url) if "starttls" in options else False
    if starttls and scheme == "smtps":
        raise ValueError(f"CORTEX_SMTP_URL {shown!r}: starttls applies to smtp://, smtps:// is TLS already")
    verify = _flag("verify", options["verify"], url) if "verify" in options else True
    timeout = _DEFAULT_TIMEOUT
    if "timeout" in options:
        try:
            timeout = float(options["timeout"])
        except ValueError:
            timeout = 0.0
        if not 0 < timeout < float("inf"):
            raise ValueError(f"CORTEX_SMTP_URL {shown!r}: timeout must be a positive number of seconds")
    return dict(
        scheme=scheme,
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        starttls=starttls,
        verify=verify,
        timeout=timeout,
    )
