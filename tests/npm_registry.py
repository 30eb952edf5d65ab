"""A loopback npm registry for tests: package documents and tarballs the real ``npm install`` accepts.

    with NpmRegistry() as registry:
        registry.publish("left-pad", "1.3.0")
        registry.publish("@acme/util", "2.0.0", {"index.js": "module.exports = 42;"}, dependencies={"left-pad": "^1"})
        ... npm install --registry registry.url ...
        assert registry.requests == ["/left-pad", ...]

Package documents are served at ``/<name>`` and ``/@scope%2fname`` (also ``/@scope/name``), tarballs at
``/<name>/-/<basename>-<version>.tgz``; an unknown path answers 404 ``{"error":"Not found"}``.
"""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import io
import json
import tarfile
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_MTIME = 499162500  # npm's own fixed tarball timestamp (1985-10-26)


def _tarball(files: dict[str, str]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo("package/" + path.lstrip("/"))
            info.size = len(data)
            info.mode = 0o644
            info.mtime = _MTIME
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.registry._serve(self, head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self.server.registry._serve(self, head=True)

    def do_POST(self) -> None:  # noqa: N802 (e.g. audit requests: not offered)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.registry._serve(self, head=False)

    do_PUT = do_DELETE = do_POST

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: NpmRegistry


class NpmRegistry:
    """A ThreadingHTTPServer on 127.0.0.1 (a free port) in a daemon thread, serving what was published."""

    def __init__(self) -> None:
        self.url = ""  # set by start()
        self.requests: list[str] = []
        self._packages: dict[str, dict] = {}
        self._tarballs: dict[str, bytes] = {}
        self._fail: int | None = None
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    def _bind(self) -> None:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.registry = self
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}/"

    def start(self) -> NpmRegistry:
        if self._thread is not None:
            return self
        self._bind()  # a free port; after stop() and start() a new one (tarball URLs are made when served)
        assert self._server is not None
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="npm-registry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        if server is None:
            return
        if thread is not None:
            server.shutdown()
            thread.join(timeout=5)
        server.server_close()

    def __enter__(self) -> NpmRegistry:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- content --

    def publish(self, name: str, version: str, files: dict[str, str] | None = None, *,
                dependencies: dict | None = None, tag: str = "latest") -> None:
        """Add ``name@version`` (and point ``tag`` at it). Every file lands under ``package/`` in the tarball; a
        package.json (name, version, main ``index.js``, dependencies) is generated unless ``files`` has one."""
        dependencies = dict(dependencies or {})
        files = dict(files) if files is not None else {
            "index.js": f"module.exports = {{name: {json.dumps(name)}, version: {json.dumps(version)}}};\n"}
        if "package.json" not in files:
            manifest = {"name": name, "version": version, "main": "index.js", "dependencies": dependencies}
            files = {"package.json": json.dumps(manifest, indent=2) + "\n", **files}
        data = _tarball(files)
        basename = name.rsplit("/", 1)[-1]
        path = f"/{name}/-/{basename}-{version}.tgz"
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        entry = {
            "name": name,
            "version": version,
            "main": "index.js",
            "dependencies": dependencies,
            "_id": f"{name}@{version}",
            "dist": {
                "shasum": hashlib.sha1(data).hexdigest(),  # noqa: S324 (npm's tarball checksum)
                "integrity": "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode(),
                "tarball": path,  # made absolute (this server's URL) when served
            },
        }
        with self._lock:
            document = self._packages.setdefault(name, {
                "_id": name, "name": name, "dist-tags": {}, "versions": {}, "time": {"created": now}})
            document["versions"][version] = entry
            document["dist-tags"][tag] = version
            document["time"][version] = now
            document["time"]["modified"] = now
            self._tarballs[path] = data

    def fail_with(self, status: int | None) -> None:
        """Answer every request with ``status`` (None: serve normally again)."""
        with self._lock:
            self._fail = status

    # -- serving --

    def _serve(self, handler: BaseHTTPRequestHandler, *, head: bool) -> None:
        with self._lock:
            self.requests.append(handler.path)
            fail = self._fail
            path = unquote(urlsplit(handler.path).path)  # /@scope%2fname → /@scope/name
            if fail is not None:
                status, body, kind = fail, json.dumps({"error": f"HTTP {fail}"}).encode(), "application/json"
            elif handler.command not in ("GET", "HEAD"):
                status, body, kind = 405, b'{"error":"Method not allowed"}', "application/json"
            elif path in self._tarballs:
                status, body, kind = 200, self._tarballs[path], "application/octet-stream"
            elif path[1:] in self._packages:
                status, kind = 200, "application/json"
                document = copy.deepcopy(self._packages[path[1:]])
                for entry in document["versions"].values():
                    entry["dist"]["tarball"] = self.url.rstrip("/") + entry["dist"]["tarball"]
                body = json.dumps(document).encode()
            else:
                status, body, kind = 404, b'{"error":"Not found"}', "application/json"
        handler.send_response(status)
        handler.send_header("Content-Type", kind)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if not head:
            handler.wfile.write(body)
