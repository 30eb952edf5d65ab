"""Signed ingest (``POST /api/events/ingest``): events from ODIN services into the domain-event log.

**Authentication.** ``X-Project-Id`` names the project (its id or appId), ``X-Timestamp`` is an ISO 8601 time
within 5 minutes of the server's clock (either way), and ``X-Signature`` is the lowercase hex HMAC-SHA256 of
``X-Timestamp`` (the exact header string) immediately followed by the exact request body bytes, keyed with the
project secret as cached by ``POST …/settings/sync-secret`` (:func:`sign`). The signature is compared in constant
time. Every failure — missing header, unknown project, project without a cached secret, stale or unparsable
timestamp, wrong signature — answers the same 401 problem (``Authentication failed``).

**Replays.** A request sent again byte for byte (same project, ``X-Timestamp`` string and body, hence the same
signature) while it can still pass the window is answered 201 with the ``id`` of the event the first one
recorded, and records nothing: no second event, no second state change. The guard remembers each recorded
request by :func:`models.ingest.replay_key` (SHA-256 of the project and the verified signature) until its
window has passed (+ :data:`REPLAY_MARGIN`): in Redis when ``REDIS_URL`` is set (``SET NX`` claim, then the event
id; :class:`RedisReplays`), else in the database, in the event's own transaction (:class:`DatabaseReplays`,
``models.ingest``). Two identical requests at once still make one event: the loser answers the winner's id
(waiting for it to commit). A replay is answered before the rate limit, so a captured request replayed by a
stranger spends no budget. A different body or timestamp is a new request; an old one fails the window (401).

**Time.** The log's clock is the server's: the event's log time (retention, ``prune_events``) is when Cortex
received it, and ``seq`` orders it; the body's ``timestamp`` is kept as the time the event reports
(``occurred_at``, shown as the envelope's ``timestamp``), so an event reporting an old time is not pruned early.

**Rate limit.** After authentication, at most :data:`RATE_LIMIT` events per project per one-second window
(fixed windows: an ``INCR``/``EXPIRE`` counter per project and second in Redis when ``REDIS_URL`` is set, so every
process shares it — one script call counts the hits of every ingest that arrived meanwhile; an in-process
counter otherwise, or while Redis is unreachable). Beyond it: 429 with
``Retry-After: 1``. Strangers cannot spend a project's budget: unauthenticated requests are not counted.

**Materialisation.** The event is validated (400 with the field and the rule) and written with
``models.events.emit`` (the body's ``type``, ``source``, ``resourceId``, ``payload`` and ``timestamp`` — the time
the event reports, beside the receive time) in one transaction with what it describes:

- ``participant.joined`` / ``participant.left`` (``data {sessionId, userId, peerId?, displayName?, userData?}``):
  the participant is created or found by external user id (``participant.created``/``updated``), a presence
  span opens/closes, and when presence changed a ``system`` line "<name> joined"/"<name> left" is added to the
  transcript (``message.created``, source ``cortex:bot``, resource ``session:<id>``);
- ``message.created`` (``data {sessionId, senderName, content, userId?, timestamp?, id?, debugAudio?}``): a
  ``user`` message (sender participant created or found when ``userId`` is given). The logged event carries the
  stored message (``MessageCreatedEventData``: Cortex's message ``id``, ``participantId``, ``externalUserId``,
  ``hasDebugAudio``, …; the sender's ``id`` as ``externalId``, other sender fields kept, ``debugAudio`` never
  logged). A re-sent ``data.id`` in the same session creates nothing and logs nothing: it answers 201 with the
  id of the event that recorded the original. ``debugAudio`` (base64 WAV) is stored only when the project has
  debug audio enabled (``cortex/integrations/debug_audio.py``);
- ``bot.status.changed`` (``data {sessionId, status}``): the session's status (``session.updated``, source
  ``cortex:ingest``);
- every other type is logged as sent.

A session id that is not the project's answers 400 (ingest documents no 404).

**Coalescing.** Writes go through :class:`models.events.GroupCommit`: everything that arrives while a
transaction is being written shares the next one (message.created, with its replay records, as multi-row
INSERTs); the Redis rate counter (:class:`SharedCounts`), the Redis replay guard (:class:`SharedReplays`) and,
on PostgreSQL, the database replay look-ups (:class:`ReplayReads`) and the message.created reads
(:class:`ContextReads`) are batched the same way (``cortex/lib/coalesce.py``); every request still gets exactly
its own answer. What this process knows about a project (its cached secret, the debug-audio flag) is re-read after :data:`TARGET_TTL`
seconds, at once after this process changed it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import peewee as pw

from cortex.integrations.debug_audio import DebugAudioStore
from cortex.integrations.shared_state import RedisLink, redis_client
from cortex.lib import crypto, metrics
from models.base import (
    ConnectionCoalescer,
    DomainError,
    Prepared,
    db,
    invalid,
    is_sqlite,
    new_id,
    parse_timestamp,
    utcnow,
)
from models.events import DomainEvent, GroupCommit, emit
from models.identity import Project
from models.ingest import (
    ReplayConflict,
    prune_replays,
    recorded_events,
    remember,
    remember_many,
    replay_key,
)
from models.ingest import recorded_event as _recorded_event
from models.messages import (
    DuplicateMessage,
    Message,
    add_system_message,
    find_by_external_id,
    insert_messages,
    new_message,
)
from models.participants import Participant, create_or_find_participant
from models.presence import record_join, record_leave
from models.sessions import STATUSES, Session, set_session_status
from models.settings import AppSettings, SecretCache
from models.settings import generation as settings_generation

log = logging.getLogger("cortex.ingest")

#: How far X-Timestamp may be from the server's clock, either way.
MAX_CLOCK_SKEW = timedelta(minutes=5)
#: Events per project per one-second window.
RATE_LIMIT = 100
RATE_KEY_PREFIX = "cortex:ingest:rate:"
#: How long a replay record outlives the window its signature can pass (process clocks may differ a little).
REPLAY_MARGIN = timedelta(seconds=60)
REPLAY_KEY_PREFIX = "cortex:ingest:seen:"
#: Redis: how long a claim of a request in progress holds (a crashed process's claim frees the request again).
REPLAY_LEASE = 30
#: Redis: how long a request waits for an identical one in progress elsewhere before answering 429.
REPLAY_WAIT = 5.0
#: Database: at most this often per process an ingest deletes expired replay records (retention does too).
REPLAY_SWEEP_INTERVAL = 60.0
#: The one 401 detail (the gate answers missing credential headers with the same problem).
AUTH_FAILED = "Authentication failed"
#: ``payload.action`` values the event envelopes document (GenericEventPayload).
ACTIONS = ("created", "updated", "deleted", "occurred")
PAYLOAD_KEYS = ("action", "data", "changes")


# ---------------------------------------------------------------- the signature


def sign(secret: str, timestamp: str, raw_body: bytes) -> str:
    """X-Signature: hex HMAC-SHA256 of ``{timestamp}{raw body}`` keyed with the project secret."""
    return hmac.new(secret.encode("utf-8"), timestamp.encode("utf-8") + raw_body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Replay:
    """What identifies a verified request for the replay guard: its key (:func:`models.ingest.replay_key`) and
    when a byte-identical copy can no longer pass the clock-skew window (plus :data:`REPLAY_MARGIN`)."""

    key: str
    expires_at: datetime


@dataclass(frozen=True)
class Target:
    """The authenticated project and what ingest needs to know about it. ``replay``: the request's replay
    record, written with its event when the database is the replay guard (None: it is not, e.g. Redis is)."""

    project: Project
    debug_audio: bool
    replay: Replay | None = None


#: The project by id or appId with its cached secret (inner join: no cached secret, no row) and its debug-audio
#: flag: one prepared query per ingest.
_TARGET = Prepared(
    lambda ref: Project.select(Project.id, Project.tenant, SecretCache.secret_encrypted, AppSettings.debug_audio_enabled)
    .join(SecretCache, on=(SecretCache.project == Project.id))
    .join_from(Project, AppSettings, pw.JOIN.LEFT_OUTER, on=(AppSettings.project == Project.id))
    .where((Project.id == ref) | (Project.app_id == ref))
    .limit(1)
)
#: How long one process trusts what it read about a project (secret, debug-audio flag) before reading it again.
#: Writes through this process take effect at once (``models.settings.generation``); through another process
#: (a revoked secret, debug audio turned off) within this many seconds.
TARGET_TTL = 1.0
_targets: dict[str, tuple[float, int, list]] = {}  # project ref → (expires, settings generation, _TARGET rows)
_TARGETS_MAX = 10_000
_secrets: dict[str, str] = {}  # ciphertext → secret: a resync makes a new ciphertext, a revoke removes the row
_SECRETS_MAX = 10_000
_NO_SECRET = os.urandom(32).hex()  # keys a throw-away HMAC for unknown projects (same work either way)


def _secret(encrypted: str) -> str | None:
    """The decrypted cached secret (None, logged, when it cannot be decrypted: CORTEX_SECRET_KEY changed)."""
    secret = _secrets.get(encrypted)
    if secret is None:
        try:
            secret = crypto.decrypt(encrypted)
        except Exception:
            log.error("signed ingest: a cached project secret cannot be decrypted (was CORTEX_SECRET_KEY changed?); "
                      "POST …/settings/sync-secret caches it again")
            return None
        if len(_secrets) >= _SECRETS_MAX:
            _secrets.clear()
        _secrets[encrypted] = secret
    return secret


def _target_rows(project_ref: str) -> list:
    """_TARGET's rows for a project id or appId, cached for TARGET_TTL seconds (per settings generation)."""
    now = time.monotonic()
    current = settings_generation()
    cached = _targets.get(project_ref)
    if cached is not None and cached[0] > now and cached[1] == current:
        return cached[2]
    rows = _TARGET.rows(ref=project_ref)
    if len(_targets) >= _TARGETS_MAX:
        _targets.clear()
    _targets[project_ref] = (now + TARGET_TTL, current, rows)
    return rows


def unauthorized() -> DomainError:
    """The one answer to every authentication failure: it tells an attacker nothing."""
    return DomainError("unauthenticated", AUTH_FAILED)


def authenticate(project_ref: str, timestamp: str, signature: str, raw_body: bytes) -> Target:
    """The project whose cached secret signed this request within the allowed clock skew; 401 otherwise."""
    try:
        signed_at = parse_timestamp(timestamp)
    except ValueError:
        signed_at = None
    rows = _target_rows(project_ref)
    secret = _secret(rows[0][2]) if rows else None
    expected = sign(secret or _NO_SECRET, timestamp, raw_body).encode("ascii")
    given = signature.strip().lower().encode("utf-8", "replace")
    matches = hmac.compare_digest(expected, given)
    fresh = signed_at is not None and abs(utcnow() - signed_at) <= MAX_CLOCK_SKEW
    if not (secret and matches and fresh):
        raise unauthorized()
    project_id, tenant_id, _encrypted, debug_audio = rows[0]
    replay = Replay(replay_key(project_id, expected.decode("ascii")), signed_at + MAX_CLOCK_SKEW + REPLAY_MARGIN)
    return Target(Project(id=project_id, tenant=tenant_id, __no_default__=True), bool(debug_audio), replay)


# ---------------------------------------------------------------- the rate limit


#: INCR each key (a key may repeat: one hit each), EXPIRE it when new; the counts in order. One call serves the
#: hits of every ingest that arrived meanwhile (:class:`SharedCounts`).
_COUNT_SCRIPT = """
local counts = {}
for i, key in ipairs(KEYS) do
  local count = redis.call('INCR', key)
  if count == 1 then redis.call('EXPIRE', key, 2) end
  counts[i] = count
end
return counts
"""


class SharedCounts(ConnectionCoalescer):
    """The shared per-second counters in Redis: the hits of concurrent requests counted with ONE script call
    (profiled on PostgreSQL + Redis: one redis-py call per ingest was 18 % of the server's CPU)."""

    def __init__(self, script):
        super().__init__(max_batch=500)
        self.script = script

    def direct(self, name: str) -> int:
        return self.serve_many([name])[0]

    def serve_many(self, names: list[str]) -> list[int]:
        return [int(count) for count in self.script(keys=names)]


class RateLimiter:
    """At most ``limit`` hits per key in each one-second window of ``clock()`` (fixed windows).

    With ``redis_url`` the counter is shared by every process (``INCR`` + ``EXPIRE`` on
    ``cortex:ingest:rate:<key>:<second>``); without it, or while Redis fails, it is this process's own.
    ``clock`` is replaceable (tests freeze it).
    """

    def __init__(self, limit: int = RATE_LIMIT, redis_url: str | None = None, clock=time.time):
        self.limit = limit
        self.redis_url = redis_url
        self.clock = clock
        self._local: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._redis = None
        self._link = RedisLink(redis_url, "ingest rate limit")  # after a failure, count locally for a few seconds

    def retry_after(self, key: str) -> int | None:
        """Count one hit; None when within the limit, else the whole seconds until the next window."""
        now = self.clock()
        window = math.floor(now)
        count = self._count_shared(key, window) if self.redis_url else None
        if count is None:
            count = self._count_local(key, window)
        if count <= self.limit:
            return None
        return max(1, math.ceil(window + 1 - now))

    def _count_local(self, key: str, window: int) -> int:
        with self._lock:
            seen_window, count = self._local.get(key, (window, 0))
            count = count + 1 if seen_window == window else 1
            self._local[key] = (window, count)
            if len(self._local) > 10_000:  # forget keys whose window has passed
                self._local = {k: v for k, v in self._local.items() if v[0] >= window}
            return count

    def _count_shared(self, key: str, window: int) -> int | None:
        if self._link.client() is None:
            return None
        name = f"{RATE_KEY_PREFIX}{key}:{window}"
        try:
            return self._counts().submit(name)
        except Exception:  # Redis down: limit per process rather than fail or stall every ingest
            self._link.failed()
            return None

    def _counts(self) -> SharedCounts:
        if self._redis is None:
            # EVALSHA, loading the script when Redis lacks it
            self._redis = SharedCounts(redis_client(self.redis_url).register_script(_COUNT_SCRIPT))
        return self._redis


_limiters: dict[str | None, RateLimiter] = {}


def rate_limiter(redis_url: str | None = None) -> RateLimiter:
    """This process's ingest rate limiter for a Redis URL (None: in-process counting)."""
    limiter = _limiters.get(redis_url)
    if limiter is None:
        limiter = _limiters[redis_url] = RateLimiter(RATE_LIMIT, redis_url)
    return limiter


def check_rate(project_id: str, redis_url: str | None) -> None:
    """429 with Retry-After when the project has sent more than RATE_LIMIT events in this second."""
    wait = rate_limiter(redis_url).retry_after(project_id)
    if wait is not None:
        raise DomainError("rate_limited", f"More than {RATE_LIMIT} events per second for this project; retry "
                                          f"after {wait} s", retry_after=wait)


# ---------------------------------------------------------------- validation (400 naming the field)


@dataclass(frozen=True)
class Incoming:
    """A validated ingest body."""

    type: str
    source: str
    resource_id: str
    action: str
    data: dict
    changes: dict | None
    timestamp: datetime | None


def _time(value, field: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"{field} must be an ISO 8601 date-time string, e.g. 2026-03-20T12:00:00.000Z")
    try:
        parsed = parse_timestamp(value)
    except ValueError:
        raise invalid(f"{field} is not an ISO 8601 date-time: {value[:64]!r}") from None
    return parsed.replace(microsecond=parsed.microsecond // 1000 * 1000)  # the precision both databases keep


def parse(body: dict) -> Incoming:
    """The body as an Incoming event (the gate validated it against IngestEventDto); 400 on semantic errors."""
    payload = body["payload"]
    unknown = sorted(key for key in payload if key not in PAYLOAD_KEYS)
    if unknown:
        raise invalid(f"payload may only hold action, data and changes; unknown: {', '.join(unknown)}")
    action = payload.get("action")
    if action not in ACTIONS:
        raise invalid(f"payload.action must be one of {', '.join(ACTIONS)}")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise invalid("payload.data must be an object")
    changes = payload.get("changes")
    if changes is not None and not isinstance(changes, dict):
        raise invalid("payload.changes must be an object (the previous values of changed fields)")
    return Incoming(
        type=body["type"],
        source=body["source"],
        resource_id=body["resourceId"],
        action=action,
        data=data,
        changes=changes,
        timestamp=_time(body.get("timestamp"), "timestamp"),
    )


def _id(data: dict, name: str, event_type: str, *, required: bool = True, numbers: bool = False) -> str | None:
    """A non-empty string id at ``payload.data.<name>`` (``numbers``: integers too, as text)."""
    value = data.get(name)
    if value is None:
        if required:
            raise invalid(f"payload.data.{name} is required for {event_type} events")
        return None
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        kind = "a non-empty string or an integer" if numbers else "a non-empty string"
        raise invalid(f"payload.data.{name} must be {kind}")
    return value


def _text(data: dict, name: str, event_type: str, *, required: bool = True) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise invalid(f"payload.data.{name} is required for {event_type} events")
        return None
    if not isinstance(value, str):
        raise invalid(f"payload.data.{name} must be a string")
    return value


def _wav(data: dict) -> bytes | None:
    """``payload.data.debugAudio``: base64 of a WAV (RIFF/WAVE) file; None when absent or empty."""
    value = data.get("debugAudio")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise invalid("payload.data.debugAudio must be a base64-encoded WAV file")
    try:
        audio = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise invalid("payload.data.debugAudio is not valid base64") from None
    if len(audio) < 12 or audio[:4] != b"RIFF" or audio[8:12] != b"WAVE":
        raise invalid("payload.data.debugAudio must be a WAV file (RIFF/WAVE header)")
    return audio


def _session_query(lock: str):
    """The project's session by id (raw id, project, tenant, status), row-locked with ``lock`` on PostgreSQL."""

    def build(session, project):
        query = Session.select(Session.id, Session.project, Session.tenant_id, Session.status).where(
            Session.id == session, Session.project == project
        )
        return query if is_sqlite() else query.for_update(lock, of=Session)

    return Prepared(build)


_SESSION = {lock: _session_query(lock) for lock in ("FOR UPDATE", "FOR KEY SHARE")}


def _session(project: Project, session_id: str, lock: str = "FOR UPDATE") -> Session:
    """The project's session, row-locked on PostgreSQL before anything else (400 when there is none).

    Lock order: every session write locks the session row before the event log (``emit``'s advisory lock), and
    inserting a message or a presence span locks the row (``FOR KEY SHARE``, the foreign key) too. Taking the
    row lock first keeps ingest in that order, so it can never deadlock with a concurrent start/stop.
    Presence takes ``FOR UPDATE`` (``models.presence`` does too); a message needs only ``FOR KEY SHARE``.
    """
    rows = _SESSION[lock].rows(session=session_id, project=project.id)
    if not rows:
        raise invalid(f"payload.data.sessionId: this project has no session {session_id[:64]!r}")
    return _session_row(*rows[0])


def _session_row(id_, project_id, tenant_id, status) -> Session:
    return Session(id=id_, project=project_id, tenant_id=tenant_id, status=status, __no_default__=True)


def _remember(target: Target, event_id: str) -> None:
    """Write the request's replay record with its event (inside the event's transaction), when the database is
    the replay guard; ReplayConflict when an identical request's record committed first."""
    if target.replay is not None:
        remember(target.replay.key, target.project.id, event_id, target.replay.expires_at)


def _log(project: Project, incoming: Incoming, data: dict | None = None, action: str | None = None) -> DomainEvent:
    """Write the ingested event itself (inside the caller's transaction)."""
    return emit(
        incoming.type,
        tenant_id=project.tenant_id,
        project_id=project.id,
        resource_id=incoming.resource_id,
        action=action or incoming.action,
        data=incoming.data if data is None else data,
        changes=incoming.changes,
        source=incoming.source,
        timestamp=incoming.timestamp,
    )


# ---------------------------------------------------------------- materialisation


#: Ingest writes share transactions (one COMMIT for every event that arrived meanwhile; see GroupCommit).
group_commit = GroupCommit()


def _presence(target: Target, incoming: Incoming, _audio_store: DebugAudioStore) -> str:
    """participant.joined / participant.left: participant, presence span, system line, the event."""
    data, kind = incoming.data, incoming.type
    session_id = _id(data, "sessionId", kind)
    user_id = _id(data, "userId", kind)
    peer_id = _id(data, "peerId", kind, required=False, numbers=True)
    display_name = _text(data, "displayName", kind, required=False)
    user_data = data.get("userData")
    if user_data is not None and not isinstance(user_data, dict):
        raise invalid("payload.data.userData must be an object")
    joined = kind == "participant.joined"
    at = incoming.timestamp or utcnow()
    project = target.project

    def write() -> str:
        session = _session(project, session_id)
        participant, _created = create_or_find_participant(project, user_id, display_name, user_data)
        if joined:
            _span, changed = record_join(session, participant, peer_id, at)
        else:
            changed = record_leave(session, participant, peer_id, at) > 0
        event = _log(project, incoming)
        if changed:  # a repeated join, or a leave without a join, changes no presence and adds no line
            name = participant.display_name or participant.external_user_id
            add_system_message(session, f"{name} {'joined' if joined else 'left'}", at)
        _remember(target, event.id)
        return event.id

    return group_commit.run(write)


def _sender(project: Project, user_id: str, participant_id: str | None, sender_name: str) -> Participant:
    """The message sender's participant; a new one is named after the sender (an existing one is not renamed)."""
    if participant_id is not None:
        return Participant(id=participant_id, project=project.id, external_user_id=user_id, __no_default__=True)
    return create_or_find_participant(project, user_id, display_name=sender_name or None)[0]


def _original_event(project: Project, session_id: str, external_id: str) -> str | None:
    """The event id that recorded the project's message with this sender id in the session, if any."""
    row = find_by_external_id(session_id, external_id)
    return row.event_id if row is not None and row.project_id == project.id else None


def _message(target: Target, incoming: Incoming, audio_store: DebugAudioStore) -> str:
    """message.created: a user message (idempotent on data.id), debug audio when enabled, the event."""
    data, kind = incoming.data, incoming.type
    session_id = _id(data, "sessionId", kind)
    user_id = _id(data, "userId", kind, required=False)
    sender_name = _text(data, "senderName", kind)
    content = _text(data, "content", kind)
    external_id = _id(data, "id", kind, required=False, numbers=True)
    at = _time(data.get("timestamp"), "payload.data.timestamp") or incoming.timestamp or utcnow()
    audio = _wav(data)
    project = target.project
    session, participant_id, original = _message_context(project, session_id, user_id, external_id)
    if original is not None:  # a re-send of a recorded message: nothing to write
        return original
    message_id = new_id()
    file = staged = None
    store = None
    if audio is not None and target.debug_audio:
        store = audio_store
        file = DebugAudioStore.file_name(project.id, message_id)
        staged = store.stage(file, audio)  # before the transaction: a full disk fails the request, not the commit
    extra = {key: value for key, value in data.items() if key not in ("debugAudio", "id", "userId")}
    if external_id is not None:
        extra["externalId"] = external_id

    try:
        participant = _sender(project, user_id, participant_id, sender_name) if user_id is not None else None
        message, event = new_message(
            session,
            sender_name=sender_name,
            content=content,
            timestamp=at,
            participant=participant,
            external_user_id=user_id,
            external_id=external_id,
            debug_audio_file=file,
            message_id=message_id,
            source=incoming.source,
            resource_id=incoming.resource_id,
            extra_data=extra,
        )
        event_id = message_commit.run((project, message, event, target))
    except DuplicateMessage:  # a re-send that raced the original (the unique index decided)
        if store is not None:
            store.discard(staged)
        original = _original_event(project, session_id, external_id)
        if original is None:
            raise
        return original
    except BaseException:
        if store is not None:
            store.discard(staged)
        raise
    if store is not None:
        store.publish(staged)
    return event_id


#: The session (raw id, project, tenant, status), the sender's participant id and the event id of an already
#: recorded message with the same sender id (NULLs when unknown or not asked for): one read, no lock.
_MESSAGE_CONTEXT = Prepared(
    lambda session, project, user, external: Session.select(
        Session.id, Session.project, Session.tenant_id, Session.status, Participant.id, Message.event_id
    )
    .join(
        Participant,
        pw.JOIN.LEFT_OUTER,
        on=(Participant.project == Session.project) & (Participant.external_user_id == user),
    )
    .join_from(
        Session, Message, pw.JOIN.LEFT_OUTER, on=(Message.session == Session.id) & (Message.external_id == external)
    )
    .where(Session.id == session, Session.project == project)
    .limit(1)
)


def _message_context(project: Project, session_id: str, user_id: str | None, external_id: str | None):
    """(session, participant id or None, event id of the original or None) for a message.created; 400 when
    the project has no such session."""
    row = context_reads.submit((session_id, project.id, user_id, external_id))
    if row is None:
        raise invalid(f"payload.data.sessionId: this project has no session {session_id[:64]!r}")
    *session, participant_id, original = row
    return _session_row(*session), participant_id, original


def _columns(model, *names: str) -> list[str]:
    return [f'"{model._meta.fields[name].column_name}"' for name in names]


class ContextReads(ConnectionCoalescer):
    """The reads of :func:`_message_context` for every message.created that arrived meanwhile, as ONE query
    on PostgreSQL (a round trip per ingest was 15 % of the server's CPU); on SQLite, which runs in process,
    each read is made where it is asked."""

    def coalescing(self) -> bool:
        return not is_sqlite() and super().coalescing()

    def direct(self, item):
        session_id, project_id, user_id, external_id = item
        rows = _MESSAGE_CONTEXT.rows(session=session_id, project=project_id, user=user_id, external=external_id)
        return rows[0] if rows else None

    def serve_many(self, items: list) -> list:
        s_id, s_project, s_tenant, s_status = _columns(Session, "id", "project", "tenant_id", "status")
        p_id, p_project, p_user = _columns(Participant, "id", "project", "external_user_id")
        m_session, m_external, m_event = _columns(Message, "session", "external_id", "event_id")
        values = ", ".join(["(%s::int, %s::text, %s::text, %s::text, %s::text)"] * len(items))
        sql = (
            f"SELECT q.i, s.{s_id}, s.{s_project}, s.{s_tenant}, s.{s_status}, p.{p_id}, m.{m_event} "  # nosec B608 - only column names from the models and placeholders are interpolated; values are bound
            f"FROM (VALUES {values}) AS q(i, session, project, usr, ext) "
            f'JOIN "{Session._meta.table_name}" s ON s.{s_id} = q.session AND s.{s_project} = q.project '
            f'LEFT JOIN "{Participant._meta.table_name}" p ON p.{p_project} = s.{s_project} AND p.{p_user} = q.usr '
            f'LEFT JOIN "{Message._meta.table_name}" m ON m.{m_session} = s.{s_id} AND m.{m_external} = q.ext'
        )
        params = [value for index, item in enumerate(items) for value in (index, *item)]
        found = {row[0]: row[1:] for row in db.execute_sql(sql, params).fetchall()}
        return [found.get(index) for index in range(len(items))]


context_reads = ContextReads()


def _write_messages(items: list) -> list[str]:
    """A batch of prepared messages with their events: multi-row INSERTs (see GroupCommit), the replay records
    of the batch too (one more; a ReplayConflict rolls the batch back and each item runs alone). An item is
    ``(project, message, event)`` or ``(project, message, event, target)`` (its replay record written too)."""
    insert_messages([(item[1], item[2]) for item in items])
    records = [
        (item[3].replay.key, item[3].project.id, item[2].id, item[3].replay.expires_at)
        for item in items
        if len(item) > 3 and item[3].replay is not None
    ]
    if records:
        remember_many(records)
    return [item[2].id for item in items]


def _write_message(item) -> str:
    """One prepared message alone, in the usual lock order: its session row first (400 if it is gone now)."""
    project, message, event = item[:3]
    _session(project, message.session_id, "FOR KEY SHARE")
    insert_messages([(message, event)])
    if len(item) > 3:
        _remember(item[3], event.id)
    return event.id


#: message.created writes: the messages and events of every request that arrived meanwhile in one transaction
#: and (PostgreSQL) two multi-row INSERTs.
message_commit = GroupCommit(_write_messages, _write_message)


def _bot_status(target: Target, incoming: Incoming, _audio_store: DebugAudioStore) -> str:
    """bot.status.changed: the session's status (session.updated), then the event."""
    data, kind = incoming.data, incoming.type
    session_id = _id(data, "sessionId", kind)
    status = data.get("status")
    if status not in STATUSES:
        raise invalid(f"payload.data.status must be one of {', '.join(STATUSES)}")
    project = target.project

    def write() -> str:
        # The session row lock comes before the event-log lock (emit), the order every session write uses.
        if set_session_status(session_id, status, "cortex:ingest", project_id=project.id) is None:
            raise invalid(f"payload.data.sessionId: this project has no session {session_id[:64]!r}")
        event_id = _log(project, incoming).id
        _remember(target, event_id)
        return event_id

    return group_commit.run(write)


MATERIALISED = {
    "participant.joined": _presence,
    "participant.left": _presence,
    "message.created": _message,
    "bot.status.changed": _bot_status,
}


def _logged(target: Target, incoming: Incoming) -> str:
    """Any other type: the event as sent (and the replay record)."""
    event_id = _log(target.project, incoming).id
    _remember(target, event_id)
    return event_id


def record(target: Target, incoming: Incoming, audio_store: DebugAudioStore) -> str:
    """Write the event (materialised where it describes Cortex resources); the id of the logged event.
    With ``target.replay`` its replay record is written in the same transaction (ReplayConflict: an identical
    request's record committed first; nothing of this one stays)."""
    materialise = MATERIALISED.get(incoming.type)
    if materialise is not None:
        return materialise(target, incoming, audio_store)
    return group_commit.run(lambda: _logged(target, incoming))


# ---------------------------------------------------------------- the replay guard


class ReplayReads(ConnectionCoalescer):
    """The replay look-ups (:class:`DatabaseReplays`) of every ingest that arrived meanwhile, as ONE query on
    PostgreSQL (a round trip per ingest cost ~10 % of the paced rate); on SQLite, which runs in process, and
    inside a transaction (whose uncommitted rows only its own connection sees) each is made where asked."""

    def __init__(self, *, max_batch: int = 500, enabled: bool | None = None):
        super().__init__(max_batch=max_batch, enabled=enabled)

    def coalescing(self) -> bool:
        return not is_sqlite() and not db.in_transaction() and super().coalescing()

    def direct(self, key: str) -> str | None:
        return _recorded_event(key)

    def serve_many(self, keys: list[str]) -> list[str | None]:
        found = recorded_events(list(dict.fromkeys(keys)))
        return [found.get(key) for key in keys]


replay_reads = ReplayReads()


def recorded_event(key: str) -> str | None:
    """The id of the event an identical request recorded (None when there is none), read with the look-ups
    of concurrent ingests."""
    return replay_reads.submit(key)


class DatabaseReplays:
    """The replay guard without Redis: the request's :class:`models.ingest.IngestReplay` row, written in its
    event's transaction; the primary key lets one of two identical requests commit, the other reads its id."""

    def __init__(self, sweep_interval: float = REPLAY_SWEEP_INTERVAL):
        self.sweep_interval = sweep_interval
        self._next_sweep = 0.0

    def run(self, target: Target, accept) -> str:
        """The event id of an identical request already recorded, else ``accept(target)``'s (it writes the
        record with the event)."""
        key = target.replay.key
        for _attempt in range(3):
            seen = recorded_event(key)
            if seen is not None:
                return seen
            try:
                event_id = accept(target)
            except ReplayConflict:  # an identical request committed first (its row is visible now)
                continue
            self.sweep()
            return event_id
        raise DomainError("rate_limited", "An identical request is being recorded; retry after 1 s", retry_after=1)

    def sweep(self) -> None:
        """Delete expired replay records, at most once per ``sweep_interval`` per process (the table holds about
        one window of ingests)."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.sweep_interval
        try:
            prune_replays()
        except Exception:  # the next sweep (or the retention job) tries again
            log.warning("signed ingest: deleting expired replay records failed", exc_info=True)


#: One call per claim, result, release or look-up of any number of keys (``KEYS`` with ``ARGV`` triples
#: op, value, seconds); each answer is '' or the key's value: ``claim`` SET NX EX — '' when claimed, else what
#: the key holds (``pending:…`` while an identical request is in progress, else its event id); ``done`` SET EX
#: the event id; ``release`` DEL when the key still holds our claim.
_REPLAY_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
  local op, value, seconds = ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]
  out[i] = ''
  if op == 'claim' then
    if not redis.call('SET', key, value, 'NX', 'EX', seconds) then out[i] = redis.call('GET', key) or '' end
  elseif op == 'done' then
    redis.call('SET', key, value, 'EX', seconds)
  elseif op == 'release' then
    if redis.call('GET', key) == value then redis.call('DEL', key) end
  end
end
return out
"""
PENDING = "pending:"


class SharedReplays(ConnectionCoalescer):
    """The Redis side of the replay guard: the operations of concurrent requests in ONE script call."""

    def __init__(self, script):
        super().__init__(max_batch=500)
        self.script = script

    def direct(self, item):
        return self.serve_many([item])[0]

    def serve_many(self, items: list) -> list[str]:
        keys = [key for _op, key, _value, _seconds in items]
        args = [arg for op, _key, value, seconds in items for arg in (op, value, seconds)]
        return [value.decode() if isinstance(value, bytes) else value for value in self.script(keys=keys, args=args)]


class RedisReplays:
    """The replay guard with Redis (every process shares it): ``SET NX`` claims a request's key before it is
    recorded, the event id replaces the claim once it committed (both expire with the window). An identical
    request answers that id; while the first is still in progress it waits up to :data:`REPLAY_WAIT` seconds
    (then 429, ``Retry-After: 1``); if the first fails, its claim is released and the copy is recorded itself.
    While Redis is unreachable the database guard stands in (for 5 s at a time, logged)."""

    def __init__(self, redis_url: str, fallback: DatabaseReplays):
        self.redis_url = redis_url
        self.fallback = fallback
        self._shared: SharedReplays | None = None
        self._link = RedisLink(redis_url, "signed ingest replay guard")  # the database stands in after a failure

    def _replays(self) -> SharedReplays:
        if self._shared is None:
            self._shared = SharedReplays(redis_client(self.redis_url).register_script(_REPLAY_SCRIPT))
        return self._shared

    def _call(self, op: str, key: str, value: str, seconds: int) -> str:
        return self._replays().submit((op, key, value, seconds))

    def run(self, target: Target, accept) -> str:
        if self._link.client() is None:
            return self.fallback.run(target, accept)
        key = REPLAY_KEY_PREFIX + target.replay.key
        seconds = max(1, math.ceil((target.replay.expires_at - utcnow()).total_seconds()))
        claim = PENDING + new_id()
        try:
            self._wait_for_claim(key, claim, min(seconds, REPLAY_LEASE))
        except _Answered as answered:
            return answered.event_id
        except DomainError:
            raise
        except Exception:  # Redis down: the database guard rather than none, or failing every ingest
            self._link.failed()
            return self.fallback.run(target, accept)
        try:
            event_id = accept(replace(target, replay=None))
        except BaseException:
            self._quietly("release", key, claim, 1)
            raise
        self._quietly("done", key, event_id, seconds)
        return event_id

    def _wait_for_claim(self, key: str, claim: str, lease: int) -> None:
        """Return once this request holds the key; _Answered with the event id of an identical request."""
        deadline = time.monotonic() + REPLAY_WAIT
        pause = 0.005
        while True:
            held = self._call("claim", key, claim, lease)
            if not held:
                return
            if not held.startswith(PENDING):
                raise _Answered(held)
            if time.monotonic() >= deadline:
                raise DomainError("rate_limited", "An identical request is still being recorded; retry after 1 s",
                                  retry_after=1)
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _quietly(self, op: str, key: str, value: str, seconds: int) -> None:
        """Send ``done`` / ``release`` without waiting for Redis (the answer does not depend on it: an identical
        request that looks meanwhile finds the claim and waits for it). Should it fail, the claim expires after
        REPLAY_LEASE seconds."""
        try:
            self._replays().post((op, key, value, seconds))
        except Exception:
            log.warning("signed ingest replay guard: Redis %s failed", op, exc_info=True)


class _Answered(Exception):
    def __init__(self, event_id: str):
        super().__init__(event_id)
        self.event_id = event_id


database_replays = DatabaseReplays()
_redis_replays: dict[str, RedisReplays] = {}


def replay_guard(redis_url: str | None) -> DatabaseReplays | RedisReplays:
    """This process's replay guard: Redis when ``redis_url`` is set, else the database."""
    if redis_url is None:
        return database_replays
    guard = _redis_replays.get(redis_url)
    if guard is None:
        guard = _redis_replays[redis_url] = RedisReplays(redis_url, database_replays)
    return guard


def ingest(project_ref: str, timestamp: str, signature: str, body: dict, raw_body: bytes, *,
           redis_url: str | None, audio_store: DebugAudioStore) -> str:
    """POST /api/events/ingest: authenticate (401); a byte-identical copy of a recorded request answers the
    recorded event's id and writes nothing; else rate-limit (429), validate (400), record; the event id. Counted in
    ``cortex_ingest_events_total{outcome}``: accepted, replayed, rejected (401), rate_limited, invalid (400)."""
    recorded = []

    def accept(guarded: Target) -> str:
        check_rate(guarded.project.id, redis_url)
        event_id = record(guarded, parse(body), audio_store)
        recorded.append(event_id)
        return event_id

    try:
        target = authenticate(project_ref, timestamp, signature, raw_body)
        event_id = replay_guard(redis_url).run(target, accept)
    except DomainError as exc:
        metrics.count(metrics.INGEST_EVENTS, _INGEST_OUTCOMES.get(exc.kind, "invalid"))
        raise
    metrics.count(metrics.INGEST_EVENTS, "accepted" if recorded else "replayed")
    return event_id


#: DomainError kind → cortex_ingest_events_total outcome
_INGEST_OUTCOMES = {"unauthenticated": "rejected", "rate_limited": "rate_limited", "invalid": "invalid"}
