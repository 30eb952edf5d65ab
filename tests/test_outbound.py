"""cortex.integrations.outbound and cortex.lib.webhook_signing: Standard Webhooks signing, the SSRF guard and the sender against a real local server.

Everything talks to 127.0.0.1 only: "public" host names are pointed at loopback (or at a private address)
through the sender's resolver hook, so no test touches the network.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from email.message import Message
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cortex.integrations.outbound import Outcome, Sender
from cortex.lib.addresses import forbidden_reason
from cortex.lib.webhook_signing import sign, signing_key, verify

ROOT = Path(__file__).resolve().parent.parent
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the published Standard Webhooks test vector
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
HUGE = 200 * 1024


# --- a local receiver ------------------------------------------------------------------------------


@dataclass
class Seen:
    path: str
    headers: Message  # names case-insensitive
    body: bytes
    client_port: int


class Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True
    server: Server

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.seen.append(Seen(self.path, self.headers, body, self.client_address[1]))
        try:
            self.route()
        except OSError:  # the client gave up (timeout, body cap): nothing to answer
            self.close_connection = True

    def answer(self, status: int, body: bytes = b"", headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def route(self):
        path = self.path
        if path == "/echo":
            self.answer(
                200,
                b'{"ok": true}',
                (("X-Multi", "a"), ("X-Multi", "b"), ("Content-Type", "application/json")),
            )
        elif path == "/fail":
            self.answer(500, b"boom")
        elif path == "/busy":
            self.answer(429, b"slow down", (("Retry-After", "7"),))
        elif path == "/down":
            when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=120)
            self.answer(503, b"", (("Retry-After", format_datetime(when, usegmt=True)),))
        elif path == "/moved":
            self.answer(302, b"", (("Location", "https://example.com/elsewhere"),))
        elif path == "/relative":
            self.answer(307, b"", (("Location", "/other"),))
        elif path == "/gone":
            self.answer(410, b"gone")
        elif path == "/huge":
            self.answer(200, b"x" * HUGE)
        elif path == "/utf8":
            self.answer(200, "héllo ✓".encode() + b"\xff")
        elif path == "/slow":
            self.server.release.wait(5)
            self.answer(200, b"late")
        elif path == "/drip":  # headers at once, then a byte every 50 ms: per-read timeouts never fire
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                if self.server.release.wait(0.05):
                    break
            self.close_connection = True
        else:
            self.answer(404, b"no such route")


class Server(ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), Receiver)
        self.seen: list[Seen] = []
        self.release = threading.Event()

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], OSError):  # failed TLS handshakes, clients that went away
            super().handle_error(request, client_address)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
def server():
    httpd = Server()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()  # joins the handler threads (their clients are closed by then)
    thread.join(5)


@pytest.fixture
def sender(server):  # depends on server: closed first, so keep-alive handler threads end
    s = Sender(allow_private=True, timeout=5)
    yield s
    s.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- signing ---------------------------------------------------------------------------------------


def independent_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def test_published_test_vector():
    assert sign(signing_key(SPEC_SECRET), SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE
    headers = {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TIMESTAMP),
        "webhook-signature": SPEC_SIGNATURE,
    }
    verify(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP + 10)


def test_signing_key_forms():
    raw = os.urandom(24)
    assert signing_key("whsec_" + base64.b64encode(raw).decode()) == raw
    assert signing_key("plain secret ✓") == "plain secret ✓".encode()
    with pytest.raises(ValueError):
        signing_key("whsec_not*base64!")
    with pytest.raises(ValueError):
        signing_key("whsec_")


@pytest.mark.parametrize("secret", ["whsec_" + base64.b64encode(b"k" * 32).decode(), "a-plain-text-secret"])
def test_sign_verify_round_trip(secret):
    key = signing_key(secret)
    body = json.dumps({"type": "message.created", "data": {"text": "hi ✓"}}).encode()
    now = int(time.time())
    signature = sign(key, "msg_1", now, body)
    expected_key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
    assert signature == independent_signature(expected_key, "msg_1", now, body)
    headers = {"Webhook-Id": "msg_1", "WEBHOOK-TIMESTAMP": str(now), "webhook-signature": signature}
    verify(secret, headers, body)  # header names case-insensitive

    good = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": signature}
    with pytest.raises(ValueError, match="signature"):
        verify(secret, good, body + b" ")  # body changed
    with pytest.raises(ValueError, match="signature"):
        verify(secret, {**good, "webhook-id": "msg_2"}, body)
    with pytest.raises(ValueError, match="signature"):
        verify("another secret", good, body)
    with pytest.raises(ValueError, match="signature"):
        verify(secret, {**good, "webhook-signature": "v2," + signature[3:]}, body)  # unknown version
    with pytest.raises(ValueError, match="too old"):
        verify(secret, good, body, now=now + 301)
    with pytest.raises(ValueError, match="too new"):
        verify(secret, good, body, now=now - 301)
    verify(secret, good, body, now=now + 299)
    verify(secret, good, body, tolerance=1000, now=now + 900)
    with pytest.raises(ValueError, match="webhook-timestamp"):
        verify(secret, {**good, "webhook-timestamp": "yesterday"}, body)
    for missing in good:
        with pytest.raises(ValueError, match=f"missing header: {missing}"):
            verify(secret, {k: v for k, v in good.items() if k != missing}, body)


def test_verify_accepts_any_of_several_signatures():
    old_key, new_secret = b"old key", "whsec_" + base64.b64encode(b"new key").decode()
    now = int(time.time())
    body = b"{}"
    rotated = f"{sign(old_key, 'msg_x', now, body)} {sign(signing_key(new_secret), 'msg_x', now, body)}"
    headers = {"webhook-id": "msg_x", "webhook-timestamp": str(now), "webhook-signature": rotated}
    verify(new_secret, headers, body)
    verify("old key", headers, body)
    with pytest.raises(ValueError, match="no matching signature"):
        verify("third key", headers, body)


# --- destination checks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "words"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fd00:ec2::254", "metadata"),
        ("::1", "loopback"),
        ("[::1]", "loopback"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.1.2.3", "private"),
        ("::ffff:169.254.169.254", "metadata"),
        ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("64:ff9b:1::a00:1", "private"),  # local-use NAT64 (RFC 8215) of 10.0.0.1
        ("::127.0.0.1", "loopback"),  # IPv4-compatible
        ("127.1", "loopback"),  # the spellings inet_aton accepts
        ("2130706433", "loopback"),
        ("0x7f000001", "loopback"),
        ("0x7f.0.0.1", "loopback"),
        ("0177.0.0.1", "loopback"),
        ("0251.0376.0251.0376", "metadata"),  # 169.254.169.254 in octal
        ("10.1", "private"),
        ("0", "unspecified"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "shared address space"),
        ("100.127.255.254", "shared address space"),
        ("224.0.0.1", "multicast"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", ""),
        ("192.0.2.10", ""),  # documentation range
        ("not-an-ip", "not an IP address"),
    ],
)
def test_forbidden_addresses(ip, words):
    reason = forbidden_reason(ip)
    assert reason is not None
    assert words in reason
    if ip == "127.0.0.1":
        assert reason == "127.0.0.1 is a loopback address"
    if ip == "2130706433":
        assert reason == "2130706433 (127.0.0.1) is a loopback address"


@pytest.mark.parametrize(
    "ip",
    ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"],
)
def test_public_addresses(ip):
    assert forbidden_reason(ip) is None


# --- the sender ------------------------------------------------------------------------------------


def test_post_delivers_and_reports(server, sender):
    out = sender.post(server.url("/echo"), b'{"a": 1}', {"webhook-id": "msg_1", "X-Custom": "yes"})
    assert isinstance(out, Outcome)
    assert out.ok and out.status == 200 and out.error is None and out.retry_after is None
    assert out.body == '{"ok": true}'
    assert out.headers["x-multi"] == "a, b"
    assert out.headers["content-type"] == "application/json"
    assert all(name == name.lower() for name in out.headers)
    assert 0 < out.duration_ms < 5000
    [seen] = server.seen
    assert seen.body == b'{"a": 1}'
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["User-Agent"] == "Cortex-Webhooks/1.0"
    assert seen.headers["webhook-id"] == "msg_1"
    assert seen.headers["X-Custom"] == "yes"
    assert seen.headers["Host"] == f"127.0.0.1:{server.port}"
    assert seen.headers["Content-Length"] == "8"


def test_given_content_type_and_user_agent_are_kept(server, sender):
    sender.post(server.url("/echo"), b"x", {"content-type": "text/plain", "user-agent": "Mine/2"})
    [seen] = server.seen
    assert seen.headers["Content-Type"] == "text/plain"
    assert seen.headers["User-Agent"] == "Mine/2"


def test_body_is_decoded_leniently(server, sender):
    out = sender.post(server.url("/utf8"), b"", {})
    assert out.body == "héllo ✓\ufffd"


@pytest.mark.parametrize(
    ("path", "status", "error", "retry_after"),
    [
        ("/fail", 500, "HTTP 500", None),
        ("/gone", 410, "HTTP 410", None),
        ("/busy", 429, "HTTP 429", 7.0),
        ("/missing", 404, "HTTP 404", None),
    ],
)
def test_http_errors(server, sender, path, status, error, retry_after):
    out = sender.post(server.url(path), b"{}", {})
    assert not out.ok
    assert (out.status, out.error, out.retry_after) == (status, error, retry_after)


def test_retry_after_http_date(server, sender):
    out = sender.post(server.url("/down"), b"{}", {})
    assert out.status == 503 and out.error == "HTTP 503"
    assert out.retry_after is not None and 110 <= out.retry_after <= 121


def test_redirect_not_followed(server, sender):
    out = sender.post(server.url("/moved"), b"{}", {})
    assert out.status == 302 and not out.ok
    assert out.error == "redirect not followed (HTTP 302 to https://example.com/elsewhere)"
    assert out.headers["location"] == "https://example.com/elsewhere"
    out = sender.post(server.url("/relative"), b"{}", {})
    assert out.error == f"redirect not followed (HTTP 307 to http://127.0.0.1:{server.port}/other)"
    assert [s.path for s in server.seen] == ["/moved", "/relative"]


def test_keep_alive_reuses_the_connection(server, sender):
    for _ in range(3):
        assert sender.post(server.url("/echo"), b"{}", {}).ok
    assert len({s.client_port for s in server.seen}) == 1
    assert sender.post(server.url("/fail"), b"{}", {}).status == 500  # error bodies are read whole too
    assert sender.post(server.url("/echo"), b"{}", {}).ok
    assert len({s.client_port for s in server.seen}) == 1


def test_body_cap_drops_the_connection(server, sender):
    out = sender.post(server.url("/huge"), b"{}", {})
    assert out.ok
    assert len(out.body.encode()) == 65536 and set(out.body) == {"x"}
    again = sender.post(server.url("/echo"), b"{}", {})
    assert again.ok and again.body == '{"ok": true}'
    assert server.seen[0].client_port != server.seen[1].client_port  # not reused with 136 KiB unread


def test_smaller_body_cap(server):
    with Sender(allow_private=True, max_body=10) as s:
        out = s.post(server.url("/echo"), b"{}", {})
        assert out.body == '{"ok": tru'
        assert s.post(server.url("/echo"), b"{}", {}).ok


def test_timeout(server):
    with Sender(allow_private=True, timeout=0.5) as s:
        started = time.monotonic()
        out = s.post(server.url("/slow"), b"{}", {})
        elapsed = time.monotonic() - started
    assert out.status is None and not out.ok
    assert out.error == "timed out after 0.5 s"
    assert 0.4 < elapsed < 1.5
    assert 400 < out.duration_ms < 1500


def test_timeout_covers_a_dripping_body(server):
    with Sender(allow_private=True, timeout=0.5) as s:
        started = time.monotonic()
        out = s.post(server.url("/drip"), b"{}", {})
        elapsed = time.monotonic() - started
    assert out.status is None and out.error == "timed out after 0.5 s"
    assert elapsed < 1.5


def test_connection_refused():
    with Sender(allow_private=True, timeout=2) as s:
        out = s.post(f"http://127.0.0.1:{closed_port()}/hook", b"{}", {})
    assert out.status is None and not out.ok
    assert out.error == "connection refused"
    assert out.headers == {} and out.body == "" and out.retry_after is None


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("ftp://example.com/x", "unsupported URL scheme 'ftp' (only http and https)"),
        ("file:///etc/passwd", "unsupported URL scheme 'file' (only http and https)"),
        ("example.com/hook", "invalid URL: no scheme"),
        ("http:///path", "invalid URL: no host"),
    ],
)
def test_bad_urls(url, error):
    calls = []
    with Sender(resolver=lambda host, port: calls.append(host) or ["8.8.8.8"]) as s:
        out = s.post(url, b"{}", {})
    assert (out.status, out.error) == (None, error)
    assert calls == []


# --- SSRF guard ------------------------------------------------------------------------------------


def test_loopback_refused_by_default(server):
    with Sender() as s:
        for host in ("127.0.0.1", "localhost", "[::1]"):
            out = s.post(server.url("/echo", host=host), b"{}", {})
            assert out.status is None and not out.ok
            assert out.error.startswith("refused: ")
            assert out.error.endswith("; set CORTEX_OUTBOUND_ALLOW_PRIVATE=true to allow)")
        assert s.post(server.url("/echo"), b"{}", {}).error == (
            "refused: address not allowed (a loopback address; set CORTEX_OUTBOUND_ALLOW_PRIVATE=true to allow)"
        )
        for spelling in ("127.1", "2130706433", "0x7f000001", "0177.0.0.1"):  # never resolved: read as addresses
            out = s.post(f"http://{spelling}:{server.port}/echo", b"{}", {})
            assert out.error.startswith("refused: address not allowed (a loopback address"), spelling
    assert server.seen == []


def test_loopback_allowed_with_allow_private(server):
    with Sender(allow_private=True) as s:
        assert s.post(server.url("/echo", host="localhost"), b"{}", {}).ok
    assert len(server.seen) == 1


def test_dns_answer_with_a_private_address_is_refused(server):
    calls = []

    def resolver(host, port):
        calls.append((host, port))
        return ["10.0.0.7"]

    with Sender(resolver=resolver) as s:
        out = s.post("https://hooks.example.com/in", b"{}", {})
    assert calls == [("hooks.example.com", 443)]
    assert out.status is None
    assert (  # the kind of address, never the address a name resolved to
        out.error == "refused: address not allowed (a private address; set CORTEX_OUTBOUND_ALLOW_PRIVATE=true to allow)"
    )
    assert "10.0.0.7" not in out.error


def test_any_forbidden_address_in_the_answer_refuses(server):
    # one public and one loopback answer: refused before any connection (so no network here either)
    with Sender(resolver=lambda host, port: ["93.184.215.14", "127.0.0.1"]) as s:
        out = s.post(f"http://rebind.example.com:{server.port}/echo", b"{}", {})
    assert out.error.startswith("refused: address not allowed (a loopback address") and "127.0.0.1" not in out.error
    with Sender(resolver=lambda host, port: ["::ffff:169.254.169.254"]) as s:
        out = s.post("http://metadata.example.com/latest", b"{}", {})
    assert "metadata" in out.error and out.error.startswith("refused: ")
    assert server.seen == []


def test_connects_to_the_resolved_address_with_the_host_name(server):
    calls = []

    def resolver(host, port):
        calls.append(host)
        return ["127.0.0.1"]

    with Sender(allow_private=True, resolver=resolver) as s:
        url = f"http://hooks.example.test:{server.port}/echo"
        assert s.post(url, b"{}", {}).ok
        assert s.post(url, b"{}", {}).ok
    assert calls == ["hooks.example.test"]  # resolved once per new connection, not per request
    assert [seen.headers["Host"] for seen in server.seen] == [f"hooks.example.test:{server.port}"] * 2


def test_resolution_failure():
    def resolver(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with Sender(resolver=resolver) as s:
        out = s.post("https://nowhere.invalid/hook", b"{}", {})
        assert (out.status, out.error) == (None, "cannot resolve nowhere.invalid")
    with Sender(resolver=lambda host, port: []) as s:
        assert s.post("https://empty.invalid/hook", b"{}", {}).error == "cannot resolve empty.invalid"


# --- TLS -------------------------------------------------------------------------------------------


@pytest.fixture
def tls_server(tmp_path):
    """An HTTPS receiver with a self-signed certificate for hooks.example.test; records the SNI names."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.example.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.example.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    sni: list[str | None] = []
    context.sni_callback = lambda sock, server_name, ctx: sni.append(server_name)

    httpd = Server()
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
    httpd.sni = sni
    httpd.cert_file = str(cert_file)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def test_tls_uses_the_host_name_while_connecting_to_the_resolved_address(tls_server):
    url = f"https://hooks.example.test:{tls_server.port}/echo"
    with Sender(allow_private=True, timeout=3, resolver=lambda host, port: ["127.0.0.1"]) as s:
        out = s.post(url, b"{}", {})  # self-signed: the system trust store rejects it
        assert out.status is None and out.error.startswith("TLS error: ")
        assert out.error == "TLS error: certificate verify failed: self-signed certificate"
        # trusting the test certificate (through the pool manager's TLS settings) makes it pass: the
        # certificate is checked against hooks.example.test although the socket went to 127.0.0.1
        s._pools.connection_pool_kw["ca_certs"] = tls_server.cert_file
        out = s.post(url, b"{}", {})
        assert out.ok, out.error
    assert set(tls_server.sni) == {"hooks.example.test"}
    assert [seen.headers["Host"] for seen in tls_server.seen] == [f"hooks.example.test:{tls_server.port}"]


# --- under gevent ----------------------------------------------------------------------------------

GEVENT_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import json, sys, threading, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import gevent
    from gevent.pool import Pool

    from cortex.integrations.outbound import Sender
    from cortex.lib.background import gevent_patched

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                if self.path == "/drip":  # the response head itself trickles in: only a hard cap ends it
                    self.wfile.write(b"HTTP/1.1 200 OK\\r\\nX-Slow: ")
                    for _ in range(40):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.05)
                    return
                time.sleep(0.1)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:
                self.close_connection = True

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256  # the default backlog of 5 would drop the burst's SYNs

    httpd = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"

    result = {"patched": gevent_patched()}
    with Sender(allow_private=True, timeout=0.5, connections_per_host=10) as sender:
        started = time.monotonic()
        outcomes = Pool(100).map(lambda i: sender.post(url + "/echo", b"{}", {}), range(100))
        result["concurrent_s"] = time.monotonic() - started
        result["ok"] = sum(o.ok for o in outcomes)
        started = time.monotonic()
        outcome = sender.post(url + "/drip", b"{}", {})
        result["drip_s"] = time.monotonic() - started
        result["drip_error"] = outcome.error
        result["after"] = sender.post(url + "/echo", b"{}", {}).ok
    print(json.dumps(result))
    sys.stdout.flush()
    """
)


def test_under_gevent(tmp_path):
    script = tmp_path / "gevent_outbound.py"
    script.write_text(GEVENT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-W", "ignore", str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["patched"] is True
    assert result["ok"] == 100
    assert result["concurrent_s"] < 2  # one after another would take 10 s
    assert result["drip_error"] == "timed out after 0.5 s"
    assert result["drip_s"] < 1.2
    assert result["after"] is True
