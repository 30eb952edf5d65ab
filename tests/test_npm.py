"""cortex.lib.npm (names, specs, version order, dependency lists), cortex.integrations.npm (the registry client)
and tests/npm_registry.py (the loopback registry, also against the real ``npm install``).

Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import urllib.error
import urllib.request

import pytest

from cortex.integrations.npm import (
    ACCEPT,
    InvalidPackageName,
    NpmRegistryClient,
    PackageNotFound,
    RegistryUnavailable,
)
from cortex.integrations.outbound import Outcome
from cortex.lib.npm import (
    MAX_DEPENDENCIES,
    sort_versions,
    validate_dependencies,
    validate_package_name,
    validate_version_spec,
)
from tests.npm_registry import NpmRegistry

# --- package names --------------------------------------------------------------------------------------------

GOOD_NAMES = [
    "left-pad",
    "node-mailjet",
    "example.com",
    "under_score",
    "123numeric",
    "a",
    "x" * 214,
    "@npm/thingy",
    "@jane/foo.js",
    "@types/node",
    "@a/b",
    "@scope/_private",
    "events",  # a core module name: refused for new packages, but a real (and common) dependency
    "lodash.get",
]

BAD_NAMES = [
    ("", "empty"),
    ("x" * 215, "214"),
    (" leading", "spaces"),
    ("trailing ", "spaces"),
    (".dotfile", "period"),
    ("_underscore", "underscore"),
    ("-hyphen", "hyphen"),
    ("node_modules", "node_modules"),
    ("favicon.ico", "favicon.ico"),
    ("NODE_MODULES", "node_modules"),
    ("Uppercase", "lowercase"),
    ("camelCase", "lowercase"),
    ("@Scope/name", "lowercase"),
    ("with space", "URL-safe"),
    ("slash/name", "URL-safe"),
    ("colon:name", "URL-safe"),
    ("ünicode", "URL-safe"),
    ("percent%20", "URL-safe"),
    ("question?", "URL-safe"),
    ("hash#", "URL-safe"),
    ("crazy!", "special"),
    ("tilde~", "special"),
    ("paren(s)", "special"),
    ("star*", "special"),
    ("quote'", "special"),
    ("@scope/crazy!", "special"),
    ("@scope", "@scope/name"),
    ("@scope/", "@scope/name"),
    ("@/name", "@scope/name"),
    ("@scope/a/b", "@scope/name"),
    ("@@scope/name", "URL-safe"),
    ("@scope/na me", "URL-safe"),
    ("@sc ope/name", "URL-safe"),
    ("@scope/.name", "period"),
    ("@./name", "period"),
    ("@scope/@name", "URL-safe"),
    ("name@1.0.0", "URL-safe"),
    ("../etc", "period"),
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_package_names(name):
    assert validate_package_name(name) is None


@pytest.mark.parametrize(("name", "reason"), BAD_NAMES)
def test_bad_package_names(name, reason):
    answer = validate_package_name(name)
    assert answer is not None
    assert reason in answer


@pytest.mark.parametrize("name", [None, 42, b"left-pad", ["x"]])
def test_package_name_must_be_a_string(name):
    assert validate_package_name(name) == "must be a string"


# --- version specs --------------------------------------------------------------------------------------------

GOOD_SPECS = [
    "^6.0.0",
    "~1.2",
    "1.x",
    "1.X.x",
    ">=1 <2",
    ">=1.0.0 <2.0.0",
    "*",
    "x",
    "1.2.3",
    "v1.2.3",
    "=1.2.3",
    "1",
    "1.2",
    "1.2.3-beta.1",
    ">=1.0.0-rc.1",
    "1.2.3 || 2.x",
    "1.0.0 - 2.0.0",
    "<3",
    "latest",
    "next",
    "beta",
    "canary",
    "rc-1",
    "legacy.v2",
    "dev_build",
]

BAD_SPECS = [
    ("", "empty"),
    ("   ", "empty"),
    ("https://example.com/pkg.tgz", "URL"),
    ("http://127.0.0.1/x.tgz", "URL"),
    ("git+ssh://git@github.com/a/b.git", "git"),
    ("git://github.com/a/b", "git"),
    ("github:user/repo", "git"),
    ("user/repo", "git"),
    ("user/repo#main", "git"),
    ("file:../local", "file:"),
    ("file:/etc", "file:"),
    ("link:../local", "link:"),
    ("npm:other-package@1", "npm:"),
    ("workspace:*", "workspace:"),
    ("../local", "paths"),
    ("./local", "paths"),
    ("/abs/path", "paths"),
    ("~/home", "paths"),
    ("C:\\dir", ":"),
    ("..\\dir", "paths"),
    ("garbage!", "semver range"),
    ("1.2.3.4", "semver range"),
    ("01.2.3", "semver range"),
    ("^1.2.3 - 2", "semver range"),
    (">=", "semver range"),
    ("Latest", "semver range"),
    ("9tag", "semver range"),
    ("a" * 65, "semver range"),
    ("name@1.0.0", "semver range"),
    ("1.0.0\n", "printable"),
    ("^1.0.0\x00", "printable"),
    ("^1.0.0 ünicode", "printable"),
    ("1" * 257, "256"),
]


@pytest.mark.parametrize("spec", GOOD_SPECS)
def test_good_version_specs(spec):
    assert validate_version_spec(spec) is None


@pytest.mark.parametrize(("spec", "reason"), BAD_SPECS)
def test_bad_version_specs(spec, reason):
    answer = validate_version_spec(spec)
    assert answer is not None
    assert reason in answer


@pytest.mark.parametrize("spec", [None, 1, 1.5, ["^1"], {"version": "1"}])
def test_version_spec_must_be_a_string(spec):
    assert validate_version_spec(spec) == "must be a string"


# --- version order --------------------------------------------------------------------------------------------


def test_sort_versions_newest_first_by_semver():
    versions = ["1.9.0", "1.10.0", "0.1.0", "2.0.0-rc.1", "2.0.0", "2.0.0-beta.2", "2.0.0-beta.10",
                "2.0.0-alpha", "1.10.0-rc.1", "10.0.0", "1.2.3"]
    assert sort_versions(versions) == ["10.0.0", "2.0.0", "2.0.0-rc.1", "2.0.0-beta.10", "2.0.0-beta.2",
                                       "2.0.0-alpha", "1.10.0", "1.10.0-rc.1", "1.9.0", "1.2.3", "0.1.0"]


def test_sort_versions_drops_invalid_ones():
    assert sort_versions(["1.0.0", "garbage", "", "1.2", "1.2.3.4", "01.0.0", None, 3, "2.0.0"]) == ["2.0.0", "1.0.0"]
    assert sort_versions([]) == []
    assert sort_versions(iter(["0.0.1", "0.0.2"])) == ["0.0.2", "0.0.1"]


def test_sort_versions_prerelease_identifiers():
    # numeric identifiers compare numerically and rank below alphanumeric ones
    assert sort_versions(["1.0.0-2", "1.0.0-10", "1.0.0-a", "1.0.0-1.1", "1.0.0-1"]) == [
        "1.0.0-a", "1.0.0-10", "1.0.0-2", "1.0.0-1.1", "1.0.0-1"]


# --- dependency lists -----------------------------------------------------------------------------------------


def test_validate_dependencies_keeps_the_order():
    items = [{"name": "zeta", "version": "^1.0.0"}, {"name": "@acme/util", "version": "latest"},
             {"name": "alpha", "version": "~2.1"}]
    wanted = validate_dependencies(items)
    assert wanted == {"zeta": "^1.0.0", "@acme/util": "latest", "alpha": "~2.1"}
    assert list(wanted) == ["zeta", "@acme/util", "alpha"]
    assert validate_dependencies([]) == {}


def test_validate_dependencies_names_the_offending_entry():
    good = [{"name": f"pkg-{i}", "version": "^1.0.0"} for i in range(3)]
    with pytest.raises(ValueError, match=r"^dependencies\[3\]\.name: must be lowercase"):
        validate_dependencies([*good, {"name": "BadName", "version": "1.0.0"}])
    with pytest.raises(ValueError, match=r"^dependencies\[1\]\.version: URLs"):
        validate_dependencies([good[0], {"name": "x", "version": "https://example.com/x.tgz"}])
    with pytest.raises(ValueError, match=r"^dependencies\[0\]\.version: must be a semver range"):
        validate_dependencies([{"name": "x", "version": "not a range"}])
    with pytest.raises(ValueError, match=r"^dependencies\[0\]\.name: required"):
        validate_dependencies([{"version": "1.0.0"}])
    with pytest.raises(ValueError, match=r"^dependencies\[0\]\.version: required"):
        validate_dependencies([{"name": "x"}])
    with pytest.raises(ValueError, match=r"^dependencies\[0\]\.name: must be a string"):
        validate_dependencies([{"name": 5, "version": "1.0.0"}])
    with pytest.raises(ValueError, match=r"^dependencies\[1\]: must be an object"):
        validate_dependencies([good[0], "left-pad@1"])
    with pytest.raises(ValueError, match=r"^dependencies: must be a list"):
        validate_dependencies({"left-pad": "1.0.0"})


def test_validate_dependencies_refuses_duplicates():
    items = [{"name": "a", "version": "1.0.0"}, {"name": "b", "version": "1.0.0"},
             {"name": "a", "version": "2.0.0"}]
    with pytest.raises(ValueError, match=r"^dependencies\[2\]\.name: a is listed twice \(also dependencies\[0\]\)"):
        validate_dependencies(items)


def test_validate_dependencies_at_most_50():
    items = [{"name": f"pkg-{i}", "version": "^1.0.0"} for i in range(MAX_DEPENDENCIES)]
    assert len(validate_dependencies(items)) == MAX_DEPENDENCIES == 50
    with pytest.raises(ValueError, match=r"^dependencies: at most 50 packages \(got 51\)"):
        validate_dependencies([*items, {"name": "one-more", "version": "1.0.0"}])


# --- the loopback registry ------------------------------------------------------------------------------------


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback test server)
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_registry_serves_documents_and_tarballs():
    with NpmRegistry() as registry:
        assert registry.url.startswith("http://127.0.0.1:") and registry.url.endswith("/")
        registry.publish("left-pad", "1.0.0")
        registry.publish("left-pad", "2.0.0-beta.1", {"index.js": "module.exports = 2;", "lib/a.js": "1"},
                         dependencies={"other": "^1"}, tag="next")
        status, body = _get(registry.url + "left-pad")
        assert status == 200
        document = json.loads(body)
        assert document["name"] == "left-pad"
        assert document["dist-tags"] == {"latest": "1.0.0", "next": "2.0.0-beta.1"}
        assert set(document["versions"]) == {"1.0.0", "2.0.0-beta.1"}
        assert {"created", "modified", "1.0.0", "2.0.0-beta.1"} <= set(document["time"])
        beta = document["versions"]["2.0.0-beta.1"]
        assert beta["dependencies"] == {"other": "^1"}
        dist = beta["dist"]
        assert dist["tarball"] == registry.url + "left-pad/-/left-pad-2.0.0-beta.1.tgz"

        status, data = _get(dist["tarball"])
        assert status == 200
        assert dist["shasum"] == hashlib.sha1(data).hexdigest()  # noqa: S324
        assert dist["integrity"] == "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
            assert sorted(tar.getnames()) == ["package/index.js", "package/lib/a.js", "package/package.json"]
            manifest = json.loads(tar.extractfile("package/package.json").read())
            assert manifest == {"name": "left-pad", "version": "2.0.0-beta.1", "main": "index.js",
                                "dependencies": {"other": "^1"}}
            assert tar.extractfile("package/index.js").read() == b"module.exports = 2;"

        assert _get(registry.url + "nope") == (404, b'{"error":"Not found"}')
        assert _get(registry.url + "left-pad/-/left-pad-9.9.9.tgz")[0] == 404
        assert registry.requests == ["/left-pad", "/left-pad/-/left-pad-2.0.0-beta.1.tgz", "/nope",
                                     "/left-pad/-/left-pad-9.9.9.tgz"]


def test_registry_default_files_and_own_package_json():
    with NpmRegistry() as registry:
        registry.publish("plain", "1.0.0")
        registry.publish("custom", "1.0.0", {"package.json": '{"name": "custom", "version": "1.0.0"}',
                                             "main.js": ""})
        for name, expected in (("plain", {"package/index.js", "package/package.json"}),
                               ("custom", {"package/main.js", "package/package.json"})):
            _, data = _get(f"{registry.url}{name}/-/{name}-1.0.0.tgz")
            with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
                assert set(tar.getnames()) == expected
                if name == "plain":
                    assert tar.extractfile("package/index.js").read().decode().startswith(
                        'module.exports = {name: "plain", version: "1.0.0"}')
                else:
                    assert json.loads(tar.extractfile("package/package.json").read()) == {
                        "name": "custom", "version": "1.0.0"}


def test_registry_scoped_paths_and_failures():
    with NpmRegistry() as registry:
        registry.publish("@acme/util", "1.0.0")
        for path in ("@acme%2futil", "@acme%2Futil", "@acme/util"):
            status, body = _get(registry.url + path)
            assert status == 200, path
            assert json.loads(body)["name"] == "@acme/util"
        tarball = json.loads(body)["versions"]["1.0.0"]["dist"]["tarball"]
        assert tarball == registry.url + "@acme/util/-/util-1.0.0.tgz"
        assert _get(tarball)[0] == 200
        registry.fail_with(503)
        assert _get(registry.url + "@acme%2futil")[0] == 503
        assert _get(tarball)[0] == 503
        registry.fail_with(None)
        assert _get(registry.url + "@acme%2futil")[0] == 200
        assert registry.requests[:3] == ["/@acme%2futil", "/@acme%2Futil", "/@acme/util"]


# --- the registry client --------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry():
    with NpmRegistry() as r:
        yield r


@pytest.fixture
def client(registry):
    c = NpmRegistryClient(registry.url, ttl=60.0, timeout=5.0)
    yield c
    c.close()


def test_client_package_info(registry, client):
    for version in ("1.9.0", "1.10.0", "0.1.0", "2.0.0-beta.1"):
        registry.publish("left-pad", version, tag="next" if "beta" in version else "latest")
    registry.publish("left-pad", "1.10.0", tag="latest")
    assert client.package_info("left-pad") == {
        "name": "left-pad",
        "versions": ["2.0.0-beta.1", "1.10.0", "1.9.0", "0.1.0"],
        "distTags": {"latest": "1.10.0", "next": "2.0.0-beta.1"},
    }
    assert registry.requests == ["/left-pad"]


def test_client_scoped_package(registry, client):
    registry.publish("@acme/util", "3.0.0")
    info = client.package_info("@acme/util")
    assert info == {"name": "@acme/util", "versions": ["3.0.0"], "distTags": {"latest": "3.0.0"}}
    # npm's encoding; urllib3 writes percent-escapes in upper case (%2F, the same per RFC 3986)
    assert [path.lower() for path in registry.requests] == ["/@acme%2futil"]


def test_client_unknown_package(registry, client):
    with pytest.raises(PackageNotFound) as caught:
        client.package_info("no-such-package")
    assert caught.value.name == "no-such-package"
    with pytest.raises(PackageNotFound):  # a 404 is cached too
        client.package_info("no-such-package")
    assert registry.requests == ["/no-such-package"]


@pytest.mark.parametrize("name", ["BadName", "../etc/passwd", "", "@scope", "a/b", "x" * 300])
def test_client_invalid_name_makes_no_request(registry, client, name):
    with pytest.raises(InvalidPackageName):
        client.package_info(name)
    assert registry.requests == []


@pytest.mark.parametrize("status", [500, 502, 503, 401, 403, 429])
def test_client_registry_failing(registry, client, status):
    registry.publish("left-pad", "1.0.0")
    registry.fail_with(status)
    with pytest.raises(RegistryUnavailable) as caught:
        client.package_info("left-pad")
    assert str(caught.value) == f"the npm registry answered HTTP {status}"
    registry.fail_with(None)  # failures are not cached
    assert client.package_info("left-pad")["versions"] == ["1.0.0"]
    assert registry.requests == ["/left-pad", "/left-pad"]


def test_client_registry_not_listening():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = NpmRegistryClient(f"http://127.0.0.1:{port}", timeout=3.0)
    with pytest.raises(RegistryUnavailable) as caught:
        client.package_info("left-pad")
    message = str(caught.value)
    assert message == "the npm registry is not reachable"
    assert "127.0.0.1" not in message and str(port) not in message
    client.close()


def test_client_cache_ttl(registry):
    registry.publish("left-pad", "1.0.0")
    clock = Clock()
    client = NpmRegistryClient(registry.url, ttl=300.0, clock=clock)
    assert client.package_info("left-pad")["versions"] == ["1.0.0"]
    registry.publish("left-pad", "1.1.0")
    clock.now += 299
    assert client.package_info("left-pad")["versions"] == ["1.0.0"]  # cached: no request
    assert registry.requests == ["/left-pad"]
    clock.now += 2
    assert client.package_info("left-pad")["versions"] == ["1.1.0", "1.0.0"]
    assert registry.requests == ["/left-pad", "/left-pad"]
    client.close()


def test_client_cache_with_a_real_small_ttl(registry):
    registry.publish("left-pad", "1.0.0")
    client = NpmRegistryClient(registry.url, ttl=0.2)
    client.package_info("left-pad")
    client.package_info("left-pad")
    assert registry.requests == ["/left-pad"]
    threading.Event().wait(0.3)
    client.package_info("left-pad")
    assert registry.requests == ["/left-pad", "/left-pad"]
    client.close()


def test_client_answers_are_copies(registry, client):
    registry.publish("left-pad", "1.0.0")
    first = client.package_info("left-pad")
    first["versions"].append("9.9.9")
    first["distTags"]["latest"] = "9.9.9"
    assert client.package_info("left-pad") == {"name": "left-pad", "versions": ["1.0.0"],
                                               "distTags": {"latest": "1.0.0"}}


def test_client_cache_is_bounded(registry):
    for name in ("a", "b", "c"):
        registry.publish(name, "1.0.0")
    clock = Clock()
    client = NpmRegistryClient(registry.url, clock=clock, max_cached=2)
    for name in ("a", "b", "c", "c", "b", "a"):
        client.package_info(name)
    assert registry.requests == ["/a", "/b", "/c", "/a"]  # a was the oldest, evicted by c
    client.close()


def test_client_is_thread_safe(registry, client):
    names = [f"pkg-{i}" for i in range(8)]
    for name in names:
        registry.publish(name, "1.0.0")
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            for _ in range(5):
                assert client.package_info(name)["versions"] == ["1.0.0"]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(name,)) for name in names * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(set(registry.requests)) == sorted(f"/{name}" for name in names)


class FakeSender:
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.calls: list[tuple] = []

    def request(self, method, url, body, headers):
        self.calls.append((method, url, body, headers))
        return self.outcome

    def close(self) -> None:
        pass


def test_client_sends_the_abbreviated_accept_header():
    sender = FakeSender(Outcome(status=200, body='{"name": "x", "versions": {"1.0.0": {}}, "dist-tags": {}}'))
    client = NpmRegistryClient("https://npm.example.com/mirror", sender=sender)
    assert client.package_info("@s/x") == {"name": "@s/x", "versions": ["1.0.0"], "distTags": {}}
    (method, url, body, headers), = sender.calls
    assert (method, url, body) == ("GET", "https://npm.example.com/mirror/@s%2fx", None)
    assert headers["Accept"] == ACCEPT == "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8"


@pytest.mark.parametrize(("outcome", "message"), [
    (Outcome(status=200, body="<html>not json</html>"), "not JSON"),
    (Outcome(status=200, body="[1, 2]"), "not a package document"),
    (Outcome(status=200, body='{"versions": {}}', truncated=True), "too large"),
    (Outcome(status=None, error="timed out after 10 s"), "did not answer in time"),
    (Outcome(status=None, error="cannot resolve internal-mirror.corp"), "not reachable"),
    (Outcome(status=None, error="connection failed: 10.1.2.3 unreachable"), "not reachable"),
    (Outcome(status=302, error="redirect not followed (HTTP 302 to http://10.0.0.1/x)"), "HTTP 302"),
])
def test_client_unusable_answers(outcome, message):
    client = NpmRegistryClient("https://npm.example.com", sender=FakeSender(outcome))
    with pytest.raises(RegistryUnavailable) as caught:
        client.package_info("left-pad")
    assert message in str(caught.value)
    assert "10." not in str(caught.value) and "corp" not in str(caught.value)


def test_client_tolerates_odd_documents():
    document = {"versions": {"1.0.0": {}, "bogus": {}, "0.9.0": {}}, "dist-tags": {"latest": "1.0.0", "odd": 5}}
    client = NpmRegistryClient("https://npm.example.com", sender=FakeSender(Outcome(status=200,
                                                                                    body=json.dumps(document))))
    assert client.package_info("left-pad") == {"name": "left-pad", "versions": ["1.0.0", "0.9.0"],
                                               "distTags": {"latest": "1.0.0"}}
    client = NpmRegistryClient("https://npm.example.com", sender=FakeSender(Outcome(status=200, body="{}")))
    assert client.package_info("left-pad") == {"name": "left-pad", "versions": [], "distTags": {}}


@pytest.mark.parametrize("url", ["ftp://npm.example.com", "registry.npmjs.org", "file:///etc", ""])
def test_client_needs_an_http_registry_url(url):
    with pytest.raises(ValueError):
        NpmRegistryClient(url, sender=FakeSender(Outcome(status=200)))


# --- the real npm against the loopback registry ---------------------------------------------------------------


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_real_npm_installs_from_the_loopback_registry(tmp_path):
    home, cache, app = tmp_path / "home", tmp_path / "cache", tmp_path / "app"
    for directory in (home, cache, app):
        directory.mkdir()
    with NpmRegistry() as registry:
        registry.publish("left-pad", "1.0.0")
        registry.publish("left-pad", "1.3.0")
        registry.publish("left-pad", "2.0.0-beta.1", tag="next")
        registry.publish("is-even", "1.0.0", {"index.js": "module.exports = (n) => n % 2 === 0;"})
        registry.publish("@acme/util", "2.1.0",
                         {"index.js": "const isEven = require('is-even');\n"
                                      "module.exports = {name: '@acme/util', even: isEven(4)};\n",
                          "lib/extra.js": "module.exports = 'extra';\n"},
                         dependencies={"is-even": "^1.0.0"})
        (app / "package.json").write_text(json.dumps({
            "name": "functions", "version": "1.0.0", "private": True,
            "dependencies": {"left-pad": "^1.0.0", "@acme/util": "latest"},
        }))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "npm_config_cache": str(cache),
            "npm_config_userconfig": str(home / ".npmrc"),
            "npm_config_globalconfig": str(tmp_path / "global-npmrc"),
            "npm_config_update_notifier": "false",
        }
        done = subprocess.run(
            ["npm", "install", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund",
             "--registry", registry.url],
            cwd=app, env=env, capture_output=True, text=True, timeout=180, check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        requests = list(registry.requests)

    modules = app / "node_modules"
    assert (modules / "left-pad" / "index.js").is_file()
    assert json.loads((modules / "left-pad" / "package.json").read_text())["version"] == "1.3.0"
    assert (modules / "@acme" / "util" / "index.js").is_file()
    assert (modules / "@acme" / "util" / "lib" / "extra.js").is_file()
    assert (modules / "is-even" / "index.js").is_file()  # the scoped package's own dependency
    assert {"/left-pad", "/@acme%2futil", "/is-even", "/left-pad/-/left-pad-1.3.0.tgz",
            "/@acme/util/-/util-2.1.0.tgz", "/is-even/-/is-even-1.0.0.tgz"} <= set(requests)
    assert "/left-pad/-/left-pad-2.0.0-beta.1.tgz" not in requests
    lock = json.loads((app / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/@acme/util"]["integrity"].startswith("sha512-")

    node = shutil.which("node")
    if node is not None:
        out = subprocess.run([node, "-e", "console.log(JSON.stringify([require('@acme/util'), require('left-pad')]))"],
                             cwd=app, env=env, capture_output=True, text=True, timeout=60, check=True).stdout
        assert json.loads(out) == [{"name": "@acme/util", "even": True}, {"name": "left-pad", "version": "1.3.0"}]
