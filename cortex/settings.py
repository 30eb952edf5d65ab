"""Configuration: read once from the environment into one immutable object."""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cortex import ROOT


class ConfigurationError(ValueError):
    """A setting has a value Cortex cannot run with; the message names the variable."""


#: The shortest CORTEX_SECRET_KEY accepted (it signs access tokens and derives the key of every stored secret).
MIN_SECRET_KEY = 32


def _bool(value: str | None, default: bool = False) -> bool:
    """Parse a boolean environment value (1/true/yes/on)."""
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _positive_seconds(env: dict, name: str, default: float) -> float:
    """A positive, finite number of seconds from ``env[name]`` (``default`` when unset); ValueError naming it."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, not {raw!r}")
    return value


def _whole_number(env: dict, name: str, default: int, minimum: int = 1) -> int:
    """A whole number ≥ ``minimum`` from ``env[name]`` (``default`` when unset); ConfigurationError naming it."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        bound = "0 or more" if minimum == 0 else f"at least {minimum}"
        raise ConfigurationError(f"{name} must be {bound}, not {raw!r}")
    return value


def _choice(env: dict, name: str, choices: tuple[str, ...], default: str) -> str:
    """One of ``choices`` (case-insensitive) from ``env[name]`` (``default`` when unset); ConfigurationError naming it."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return value


def _schedule(env: dict, name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    """Comma-separated non-negative seconds (e.g. ``1,1,1``); an empty list means no retries ("none")."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    if raw.strip().lower() == "none":
        return ()
    values = []
    for part in raw.split(","):
        try:
            value = float(part)
        except ValueError:
            raise ConfigurationError(f"{name} must be comma-separated seconds (e.g. 5,300,1800), not {raw!r}") from None
        if not math.isfinite(value) or value < 0:
            raise ConfigurationError(f"{name}: {part.strip()!r} is not a non-negative number of seconds")
        values.append(value)
    return tuple(values)


@dataclass(frozen=True)
class Settings:
    """Every tunable of the server; see the configuration table in README.md."""

    data_dir: Path
    database_url: str
    secret_key: str
    secret_key_previous: tuple[str, ...] = ()  # older keys whose stored secrets stay readable (rotation)
    redis_url: str | None = None
    spec_path: Path = ROOT / "openapi" / "cortex.json"
    access_token_ttl: int = 3600
    fusion_session_ttl: int = 30 * 24 * 3600
    db_pool_size: int = 32
    db_pool_timeout: float = 10.0  # CORTEX_DB_POOL_TIMEOUT: seconds a request waits for a pooled connection (then 503)
    api_key_touch_interval: int = 60
    log_level: str = "INFO"
    log_format: str = "text"  # CORTEX_LOG_FORMAT: text, or json (one JSON object per line)
    metrics_token: str | None = field(default=None, repr=False)  # CORTEX_METRICS_TOKEN: bearer token of GET /metrics
    identity_provider: str = "embedded"
    max_body_bytes: int = 1024 * 1024
    smtp_url: str | None = None
    mail_from: str = "cortex@localhost"
    rooms_api_url: str | None = None
    token_provider_timeout: float = 10.0
    bot_driver: str = "local"
    event_retention_days: float = 7.0
    client_timeout: float = 60.0  # seconds a client connection may neither send nor accept data
    sse_max_seconds: float = 300.0  # an event stream ends after this long; clients resume with Last-Event-ID
    webhook_worker: bool = True  # `cortex serve` runs the webhook fan-out + delivery worker too
    webhook_retry_schedule: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)  # seconds before each retry
    webhook_timeout: float = 15.0  # one delivery attempt, connect to last byte
    plugin_timeout: float = 60.0  # one call of a plugin's outside provider (e.g. an LLM summary), connect to last byte
    outbound_allow_private: bool = False  # tenant-chosen URLs may be loopback/private/link-local/metadata addresses
    webhook_concurrency: int = 100  # deliveries in flight per worker process
    webhook_subscription_concurrency: int = 10  # of which to one subscription
    webhook_disable_after: float = 5 * 24 * 3600.0  # a subscription failing this long without a success is disabled
    webhook_log_retention_days: float = 30.0  # delivered/failed webhook events and their attempts are kept this long
    webhook_poll_interval: float = 0.05  # how often a worker looks for new events written by other processes
    login_max_failures: int = 10  # failed logins of one account within login_window before it answers 429
    login_max_failures_per_address: int = 50  # failed logins from one client address within login_window
    login_window: float = 900.0  # seconds a failed login counts
    trusted_proxies: int = 0  # reverse proxies in front whose X-Forwarded-For is believed (the client address)
    max_connections: int = 1000  # connections one serving process serves at once (a gevent pool)
    sse_max_streams_per_principal: int = 100  # open event streams of one user or API key
    max_webhooks_per_project: int = 100  # live webhook subscriptions of one project
    max_api_keys_per_user: int = 100  # live (unrevoked) API keys of one user
    max_access_keys_per_project: int = 100  # ODIN access keys of one project
    max_members_per_project: int = 1000  # memberships (any status) of one project
    gathering_idle_hours: float = 24.0  # a lobby or open gathering without a change this long expires
    functions_runtime: bool = True  # this process supervises project runtimes (`cortex serve`, `cortex runtime`)
    functions_dir: Path | None = None  # where runtimes live (default <data dir>/functions)
    node_binary: str | None = None  # the node executable (default: `node` on PATH)
    npm_registry: str = "https://registry.npmjs.org/"  # where dependencies and package documents come from
    functions_max_functions: int = 50  # the ceiling of a project's maxFunctions
    functions_max_memory_mb: int = 1024  # the ceiling of a project's maxMemoryPerFunction (MB)
    public_url: str = "http://127.0.0.1:8080"  # how functions reach this API (their CORTEX_API_URL)

    @classmethod
    def from_env(cls, env: dict | None = None, **overrides) -> Settings:
        """Build settings from environment variables (``os.environ`` by default)."""
        env = dict(os.environ if env is None else env)
        data_dir = Path(overrides.pop("data_dir", None) or env.get("CORTEX_DATA_DIR") or "data").resolve()
        database_url = overrides.pop("database_url", None) or env.get("DATABASE_URL") or (
            f"sqlite:///{data_dir / 'cortex.db'}"
        )
        if not database_url.startswith(("sqlite:///", "postgres://", "postgresql://")):
            raise ConfigurationError("DATABASE_URL must be sqlite:///relative.db, sqlite:////absolute.db or "
                                     f"postgresql://user:pass@host:5432/db, not {database_url[:80]!r}")
        secret_key = overrides.pop("secret_key", None) or env.get("CORTEX_SECRET_KEY") or ""
        values = dict(
            data_dir=data_dir,
            database_url=database_url,
            secret_key=secret_key,
            secret_key_previous=tuple(
                key.strip() for key in (env.get("CORTEX_SECRET_KEY_PREVIOUS") or "").split(",") if key.strip()
            ),
            redis_url=env.get("REDIS_URL") or None,
            access_token_ttl=int(env.get("CORTEX_ACCESS_TOKEN_TTL", 3600)),
            fusion_session_ttl=int(env.get("CORTEX_SESSION_TTL", 30 * 24 * 3600)),
            db_pool_size=_whole_number(env, "CORTEX_DB_POOL_SIZE", 32),
            db_pool_timeout=_positive_seconds(env, "CORTEX_DB_POOL_TIMEOUT", 10.0),
            api_key_touch_interval=int(env.get("CORTEX_API_KEY_TOUCH_INTERVAL", 60)),
            log_level=env.get("CORTEX_LOG_LEVEL", "INFO"),
            log_format=_choice(env, "CORTEX_LOG_FORMAT", ("text", "json"), "text"),
            metrics_token=env.get("CORTEX_METRICS_TOKEN") or None,
            identity_provider=env.get("CORTEX_IDENTITY_PROVIDER", "embedded"),
            max_body_bytes=int(env.get("CORTEX_MAX_BODY_BYTES", 1024 * 1024)),
            smtp_url=env.get("CORTEX_SMTP_URL") or None,
            mail_from=env.get("CORTEX_MAIL_FROM", "cortex@localhost"),
            rooms_api_url=(env.get("CORTEX_ROOMS_API_URL") or "").rstrip("/") or None,
            token_provider_timeout=float(env.get("CORTEX_TOKEN_PROVIDER_TIMEOUT", 10)),
            bot_driver=env.get("CORTEX_BOT_DRIVER", "local"),
            event_retention_days=float(env.get("CORTEX_EVENT_RETENTION_DAYS", 7)),
            sse_max_seconds=_positive_seconds(env, "CORTEX_SSE_MAX_SECONDS", 300.0),
            client_timeout=_positive_seconds(env, "CORTEX_CLIENT_TIMEOUT", 60.0),
            webhook_worker=_bool(env.get("CORTEX_WEBHOOK_WORKER"), True),
            webhook_retry_schedule=_schedule(env, "CORTEX_WEBHOOK_RETRY_SCHEDULE",
                                             (5, 300, 1800, 7200, 18000, 36000, 36000)),
            webhook_timeout=_positive_seconds(env, "CORTEX_WEBHOOK_TIMEOUT", 15.0),
            plugin_timeout=_positive_seconds(env, "CORTEX_PLUGIN_TIMEOUT", 60.0),
            # CORTEX_WEBHOOK_ALLOW_PRIVATE is the older name of the same switch
            outbound_allow_private=_bool(env.get("CORTEX_OUTBOUND_ALLOW_PRIVATE") or env.get("CORTEX_WEBHOOK_ALLOW_PRIVATE")),
            webhook_concurrency=_whole_number(env, "CORTEX_WEBHOOK_CONCURRENCY", 100),
            webhook_subscription_concurrency=_whole_number(env, "CORTEX_WEBHOOK_SUBSCRIPTION_CONCURRENCY", 10),
            webhook_disable_after=_positive_seconds(env, "CORTEX_WEBHOOK_DISABLE_AFTER", 5 * 24 * 3600.0),
            webhook_poll_interval=_positive_seconds(env, "CORTEX_WEBHOOK_POLL_INTERVAL", 0.05),
            login_max_failures=_whole_number(env, "CORTEX_LOGIN_MAX_FAILURES", 10),
            login_max_failures_per_address=_whole_number(env, "CORTEX_LOGIN_MAX_FAILURES_PER_ADDRESS", 50),
            login_window=_positive_seconds(env, "CORTEX_LOGIN_WINDOW", 900.0),
            trusted_proxies=_whole_number(env, "CORTEX_TRUSTED_PROXIES", 0, minimum=0),
            max_connections=_whole_number(env, "CORTEX_MAX_CONNECTIONS", 1000),
            sse_max_streams_per_principal=_whole_number(env, "CORTEX_SSE_MAX_STREAMS_PER_PRINCIPAL", 100),
            max_webhooks_per_project=_whole_number(env, "CORTEX_MAX_WEBHOOKS_PER_PROJECT", 100),
            max_api_keys_per_user=_whole_number(env, "CORTEX_MAX_API_KEYS_PER_USER", 100),
            max_access_keys_per_project=_whole_number(env, "CORTEX_MAX_ACCESS_KEYS_PER_PROJECT", 100),
            max_members_per_project=_whole_number(env, "CORTEX_MAX_MEMBERS_PER_PROJECT", 1000),
            webhook_log_retention_days=_positive_seconds(env, "CORTEX_WEBHOOK_LOG_RETENTION_DAYS", 30.0),
            gathering_idle_hours=_positive_seconds(env, "CORTEX_GATHERING_IDLE_HOURS", 24.0),
            functions_runtime=_bool(env.get("CORTEX_FUNCTIONS_RUNTIME"), True),
            functions_dir=Path(env["CORTEX_FUNCTIONS_DIR"]).resolve() if env.get("CORTEX_FUNCTIONS_DIR")
            else data_dir / "functions",
            node_binary=env.get("CORTEX_NODE_BINARY") or None,
            npm_registry=(env.get("CORTEX_NPM_REGISTRY") or "https://registry.npmjs.org").rstrip("/") + "/",
            functions_max_functions=_whole_number(env, "CORTEX_FUNCTIONS_MAX_FUNCTIONS", 50),
            functions_max_memory_mb=_whole_number(env, "CORTEX_FUNCTIONS_MAX_MEMORY_MB", 1024),
            public_url=(env.get("CORTEX_PUBLIC_URL") or "http://{host}:{port}".format(
                host=env.get("CORTEX_HOST", "127.0.0.1"), port=env.get("CORTEX_PORT", "8080"))).rstrip("/"),
        )
        if env.get("CORTEX_SPEC_PATH"):
            values["spec_path"] = Path(env["CORTEX_SPEC_PATH"])
        values.update(overrides)
        return cls(**values)

    def with_secret_key(self) -> Settings:
        """Return settings whose secret key is set, generating and persisting one in the data dir. ValueError
        naming the variable for a CORTEX_SECRET_KEY (or a previous key) shorter than MIN_SECRET_KEY characters."""
        for name, key in (("CORTEX_SECRET_KEY", self.secret_key),
                          *(("CORTEX_SECRET_KEY_PREVIOUS", old) for old in self.secret_key_previous)):
            if key and len(key) < MIN_SECRET_KEY:
                raise ConfigurationError(f"{name} must be at least {MIN_SECRET_KEY} characters (a long random string, e.g. "
                                 "python -c 'import secrets; print(secrets.token_urlsafe(48))'); this one has "
                                 f"{len(key)}")
        if self.secret_key:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key_file = self.data_dir / "secret.key"
        if not key_file.exists():
            # Write a complete file under a temporary name, then link it into place: concurrent first starts
            # agree on one key, and nobody ever reads a half-written file.
            temporary = self.data_dir / f".secret.key.{os.getpid()}.{secrets.token_hex(4)}"
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
            try:
                os.link(temporary, key_file)
            except FileExistsError:
                pass  # another process won the race; use its key
            finally:
                os.unlink(temporary)
        key = key_file.read_text().strip()
        if len(key) < MIN_SECRET_KEY:
            raise ConfigurationError(f"{key_file} holds no usable secret key (need {MIN_SECRET_KEY}+ characters); delete it "
                             "or set CORTEX_SECRET_KEY")
        return _replace(self, secret_key=key)


def apply_to_process(settings: Settings) -> None:
    """Hand the settings to the process-wide pure modules: the encryption keys (current and previous) and the
    outbound address policy, the gatherings' idle age. The app factory and every CLI command call it."""
    from cortex.lib import addresses, crypto
    from models import gatherings

    crypto.init_encryption(settings.secret_key, settings.secret_key_previous)
    addresses.set_allow_private(settings.outbound_allow_private)
    gatherings.configure(settings.gathering_idle_hours)


def _replace(settings: Settings, **changes) -> Settings:
    """dataclasses.replace for the frozen Settings."""
    from dataclasses import replace

    return replace(settings, **changes)
