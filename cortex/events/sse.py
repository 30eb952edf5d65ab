"""Server-Sent Event streams of the domain-event log (``GET /api/events/stream``, ``…/projects/{id}/events/stream``).

One stream, in order (:class:`EventStream`):

1. The filters are parsed before anything is streamed (:func:`parse_types`, :func:`parse_resources`); they
   never reject: an item that names no type or resource matches nothing.
2. The stream subscribes to the process's live fan-out FIRST (a ``cortex.events.fanout.LiveFanout`` started by
   ``cortex serve``), then sends ``retry: 3000``.
3. ``Last-Event-ID`` (the header, else the ``lastEventId`` query): the id is looked up in the log → its
   ``seq``, and every matching event the caller may see with a greater ``seq`` is replayed from the log in
   batches (the database connection goes back to the pool between batches). An unknown, pruned or other
   tenant's id replays nothing.
4. Live: items from the subscription, skipping those whose ``seq`` the replay already covered. Subscribed
   before the replay read the log, so nothing committed meanwhile is missed; skipped by ``seq`` afterwards,
   so nothing is sent twice (sequence order is commit order, see ``models.events``).
5. ``: heartbeat`` every 15 s. The stream ends after ``CORTEX_SSE_MAX_SECONDS``, when its subscription
   overflows (a client too slow to read 1,000 queued events), when the fan-out stops, or when the caller's
   access ends; a ``: closed (<reason>)`` comment says why. Clients reconnect with ``Last-Event-ID`` and
   lose nothing.

Who sees what (:class:`Access`, :class:`EventFilter`): the tenant-wide stream carries the principal's tenant's
events of the projects the caller is an active member of (``models.access.member_projects``: the projects
``project_for`` would let them use), plus tenant-level events (no ``projectId``); an API key acts for its creator, and a key bound to one
project sees only that project's events, on either endpoint. The project stream carries that project's
events (the gate already checked membership and the developer role). While a stream runs, memberships and
API-key validity are looked up again at most every 15 s per caller and process (one shared cache,
``ACCESS_CACHE``, whatever number of streams the caller holds): a removed member stops seeing a project (the
project stream ends), a revoked key's stream ends; a project created or joined meanwhile shows up at once (an
event of a project not known to be the caller's makes one fresh lookup).

Without a live fan-out (an app built by ``create_app`` and not started by ``cortex serve``, e.g. the test
client or another WSGI server) a stream polls the log itself every 0.25 s: correct, but one query per
stream per poll — production streams are push-based.

Frames are rendered with flask-sse's ``Message`` (``event:``, ``data:`` the envelope JSON, ``id:``), once per
event and process (cached on the ``LiveEvent``), not once per subscriber.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass

import orjson
import peewee as pw
from flask_sse import Message

from cortex.integrations.shared_state import RedisLink
from models.access import Principal, hidden_event_prefixes, member_projects
from models.base import release_connection, utcnow
from models.events import DomainEvent, event_body, newest_seq
from models.identity import ApiKey

log = logging.getLogger("cortex.sse")

RETRY_MS = 3000  # reconnect advice sent first
HEARTBEAT_SECONDS = 15.0  # a comment this often keeps proxies from closing an idle stream (tests lower it)
ACCESS_RECHECK_SECONDS = 15.0  # memberships and API-key validity are looked up again after this long
POLL_SECONDS = 0.25  # how often a stream without a live fan-out reads the log
REPLAY_BATCH = 500  # events per replay query
LIVE_BATCH = 200  # queued live items written as one chunk at most
HEARTBEAT = b": heartbeat\n\n"
RETRY_FRAME = str(Message("", retry=RETRY_MS)).encode()  # b"retry:3000\n\n"

#: Characters str.splitlines() (and so flask-sse's Message) breaks ``data:`` lines at that orjson leaves
#: unescaped; SSE clients would re-join the lines with "\n", corrupting the JSON. Escaped, they stay JSON.
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


# ----------------------------------------------------------------- wire format


def render_event(item: dict) -> bytes:
    """One envelope as a Server-Sent Event: ``event:`` its type, ``data:`` its JSON, ``id:`` its id."""
    data = orjson.dumps(item).decode()
    if not data.isascii():
        data = data.translate(_LINE_BREAKS)
    return str(Message(data, type=_field(item.get("type")), id=_field(item.get("id")))).encode()


def _field(value) -> str | None:
    """A single-line field value (a CR or LF would end the field and let the rest inject others)."""
    if value is None:
        return None
    return str(value).replace("\r", "").replace("\n", "")


def frame_of(item) -> bytes:
    """The rendered frame of a ``LiveEvent``, rendered once and cached on it for every other subscriber."""
    frame = item.frame
    if frame is None:
        frame = item.frame = render_event(item.envelope)
    return frame


# ----------------------------------------------------------------- filters


def _items(value: str | None) -> list[str] | None:
    """Comma-separated items, trimmed, empty ones dropped; None (no filter) when nothing is left.

    Filters never reject: an item that names no type or resource (too long, odd characters, a ``*`` inside)
    simply matches nothing, so every string the document allows is a valid filter.
    """
    if value is None:
        return None
    items = [item for item in (part.strip() for part in value.split(",")) if item]
    return items or None


def parse_types(value: str | None) -> tuple[frozenset[str], tuple[str, ...]] | None:
    """``types`` → (exact types, prefixes); None for every type. Only a trailing ``*`` is a wildcard."""
    items = _items(value)
    if items is None:
        return None
    exact, prefixes = set(), []
    for item in items:
        if item == "*":
            return None
        if item.endswith("*") and "*" not in item[:-1]:
            prefixes.append(item[:-1])
        else:
            exact.add(item)  # a '*' elsewhere is literal: no event type contains one, so it matches nothing
    return frozenset(exact), tuple(prefixes)


def parse_resources(value: str | None) -> frozenset[str] | None:
    """``resources`` → the resourceIds to keep (exact match); None for every resource."""
    items = _items(value)
    return None if items is None else frozenset(items)


@dataclass(frozen=True)
class EventFilter:
    """Which envelopes a stream wants: one tenant, maybe one project, types, resources (no I/O: it runs in the
    publisher for every event and subscriber). ``where`` is the same rule as SQL, for the replay."""

    tenant_id: str
    project_id: str | None = None  # only this project's events (project stream, or a project-bound API key)
    tenant_level: bool = True  # events without a project too (only when ``project_id`` is None)
    types: frozenset[str] | None = None  # exact types; None: no type filter
    prefixes: tuple[str, ...] = ()
    resources: frozenset[str] | None = None  # None: no resource filter
    hidden: tuple[str, ...] = ()  # type prefixes never sent: content the principal's scopes may not read

    def accepts(self, item: dict) -> bool:
        """Does the envelope pass the filter?"""
        if item.get("tenantId") != self.tenant_id:
            return False
        project = item.get("projectId")
        if self.project_id is not None:
            if project != self.project_id:
                return False
        elif project is None and not self.tenant_level:
            return False
        kind = item.get("type") or ""
        if self.hidden and kind.startswith(self.hidden):
            return False
        if self.types is not None:
            if kind not in self.types and not (self.prefixes and kind.startswith(self.prefixes)):
                return False
        return self.resources is None or item.get("resourceId") in self.resources

    def where(self, query, projects: set[str] | None = None):
        """Restrict a DomainEvent query the same way, and to ``projects`` (the visible ones) when given."""
        query = query.where(DomainEvent.tenant_id == self.tenant_id)
        if self.project_id is not None:
            query = query.where(DomainEvent.project_id == self.project_id)
        elif projects is not None:
            visible = DomainEvent.project_id.in_(sorted(projects)) if projects else pw.SQL("1 = 0")
            if self.tenant_level:
                visible = visible | DomainEvent.project_id.is_null()
            query = query.where(visible)
        elif not self.tenant_level:
            query = query.where(DomainEvent.project_id.is_null(False))
        if self.types is not None:
            condition = DomainEvent.type.in_(sorted(self.types)) if self.types else None
            for prefix in self.prefixes:
                starts = pw.fn.SUBSTR(DomainEvent.type, 1, len(prefix)) == prefix
                condition = starts if condition is None else condition | starts
            query = query.where(condition)
        if self.resources is not None:
            query = query.where(DomainEvent.resource_id.in_(sorted(self.resources)))
        for prefix in self.hidden:
            query = query.where(pw.fn.SUBSTR(DomainEvent.type, 1, len(prefix)) != prefix)
        return query


# ----------------------------------------------------------------- access


class AccessLost(Exception):
    """The caller may no longer read this stream (API key revoked or expired, project membership ended)."""


class TtlCache:
    """A process-wide cache of access lookups, shared by every stream of the process.

    1,000 streams that opened together refresh together: per-stream lookups would be 1,000 queries at once
    (and SQLite's block the whole gevent process). Shared, a caller's memberships and key are looked up once
    per ``ACCESS_RECHECK_SECONDS`` however many streams they hold.
    """

    def __init__(self, limit: int = 100_000):
        self.limit = limit
        self._entries: dict[tuple, tuple[float, object]] = {}  # key → (expires at, value)

    def get(self, key: tuple, default=None):
        """The unexpired value, else ``default``."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= time.monotonic():
            return default
        return entry[1]

    def put(self, key: tuple, value, max_age: float):
        """Store ``value`` for ``max_age`` seconds; returns it."""
        if len(self._entries) >= self.limit:  # drop the expired ones (all, if none expired)
            now = time.monotonic()
            self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
            if len(self._entries) >= self.limit:
                self._entries.clear()
        self._entries[key] = (time.monotonic() + max_age, value)
        return value

    def clear(self) -> None:
        self._entries.clear()


ACCESS_CACHE = TtlCache()


class Access:
    """The projects whose events the caller may see: active memberships (of the API key's creator for a key)
    in the tenant, and whether the API key is still valid, looked up at most every ``max_age`` seconds per
    caller and process (``ACCESS_CACHE``).

    ``project_id`` set (project stream, project-bound API key): only that project, and losing it ends the
    stream (``AccessLost``); a revoked or expired key ends it too. An event of a project the caller was not
    known to belong to makes one fresh lookup (a project created or joined since appears at once); a
    project still not theirs is then not looked up again for ``max_age``.
    """

    def __init__(self, principal: Principal, tenant_id: str, project_id: str | None,
                 max_age: float = ACCESS_RECHECK_SECONDS):
        self.user_id = principal.user_id
        self.api_key_id = principal.api_key_id if principal.kind == "api_key" else None
        self.tenant_id = tenant_id
        self.project_id = project_id
        self.max_age = max_age
        self.queried = False  # a query ran since the last release_connection() (see EventStream._live)
        self._key = ("projects", self.user_id, tenant_id, project_id)

    def projects(self) -> frozenset[str]:
        """The visible project ids."""
        if self.api_key_id is not None:
            valid = ACCESS_CACHE.get(("api-key", self.api_key_id))
            if valid is None:
                valid = ACCESS_CACHE.put(("api-key", self.api_key_id), self._key_valid(), self.max_age)
            if not valid:
                raise AccessLost("API key revoked or expired")
        projects = ACCESS_CACHE.get(self._key)
        if projects is None:
            projects = ACCESS_CACHE.put(self._key, self._load(), self.max_age)
        if self.project_id is not None and self.project_id not in projects:
            raise AccessLost(f"no longer a member of project {self.project_id}")
        return projects

    def visible(self, project_id: str | None) -> bool:
        """May the caller see an event of this project (None: a tenant-level event, which the filter decides)?"""
        projects = self.projects()
        if project_id is None or project_id in projects:
            return True
        if self.project_id is not None:
            return False
        denied = ("not-a-member", self.user_id, self.tenant_id, project_id)
        if ACCESS_CACHE.get(denied):
            return False
        if project_id in ACCESS_CACHE.put(self._key, self._load(), self.max_age):  # created or joined since?
            return True
        ACCESS_CACHE.put(denied, True, self.max_age)
        return False

    def _load(self) -> frozenset[str]:
        self.queried = True
        found = member_projects(self.user_id, tenant_id=self.tenant_id, project_id=self.project_id)
        return frozenset(project.id for project, _role in found)

    def _key_valid(self) -> bool:
        self.queried = True
        row = ApiKey.select(ApiKey.revoked_at, ApiKey.expires_at).where(ApiKey.id == self.api_key_id).first()
        return not (row is None or row.revoked_at is not None or (row.expires_at and row.expires_at <= utcnow()))


# ----------------------------------------------------------------- the stream


class EventStream:
    """The body of one SSE response: an iterator of byte chunks with ``close()`` (called by the WSGI server,
    also when the client went away), which ends the subscription even if iteration never started.

    It holds no database connection while it waits: every read returns its connection to the pool.
    """

    def __init__(
        self,
        event_filter: EventFilter,
        access: Access,
        *,
        fanout=None,
        last_event_id: str | None = None,
        max_seconds: float = 300.0,
        heartbeat: float = HEARTBEAT_SECONDS,
        poll: float = POLL_SECONDS,
        on_close=None,
    ):
        self.filter = event_filter
        self.on_close = on_close  # called once when the stream ends (frees the caller's stream slot)
        self.access = access
        self.fanout = fanout
        self.last_event_id = (last_event_id or "").strip() or None
        self.max_seconds = max_seconds
        self.heartbeat = heartbeat
        self.poll = poll
        self.position = 0  # highest seq covered: sent, or passed over by a (filtered) read of the log
        self.sent = 0  # events sent
        self.ended: str | None = None  # why the stream ended
        self.subscription = None
        self._body = self._run()

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        return next(self._body)

    def close(self) -> None:
        """End the stream: unsubscribe and give back any database connection (idempotent)."""
        self._body.close()
        self._release()

    def _release(self) -> None:
        subscription, self.subscription = self.subscription, None
        if subscription is not None:
            self.fanout.unsubscribe(subscription)
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()
        release_connection()

    def _run(self):
        deadline = time.monotonic() + self.max_seconds
        try:
            # Live delivery starts before anything is sent: what the client causes after reading `retry:` shows.
            if self.fanout is not None:
                self.subscription = self.fanout.subscribe(self.filter.accepts)
            # Start at the newest committed event: a lagging dispatcher may still deliver older ones, which
            # this stream never promised (they are for Last-Event-ID replay).
            self.position = newest_seq()
            release_connection()
            yield RETRY_FRAME
            try:
                after = self._resume_point()
                if after is not None:
                    self.position = 0  # replay from `after`, whatever polling would have started at
                    yield from self._from_log(after, deadline)
                release_connection()
                self.ended = yield from self._live(deadline)
            except AccessLost as exc:
                log.info("event stream closed: %s", exc)
                self.ended = "access"
            except Exception:
                log.exception("event stream failed; closing it (the client resumes with Last-Event-ID)")
                self.ended = "error"
            yield f": closed ({self.ended})\n\n".encode()
        finally:
            self._release()

    def _resume_point(self) -> int | None:
        """The ``seq`` of Last-Event-ID when it names an event of this tenant still in the log, else None."""
        if self.last_event_id is None or len(self.last_event_id) > 64:
            return None
        row = (
            DomainEvent.select(DomainEvent.seq, DomainEvent.tenant_id)
            .where(DomainEvent.id == self.last_event_id)
            .tuples()
            .first()
        )
        if row is None or row[1] != self.filter.tenant_id:
            return None
        return row[0]

    def _from_log(self, after: int, deadline: float):
        """Yield every matching, visible event after ``after`` from the log, a batch per chunk."""
        self.position = max(self.position, after)
        while time.monotonic() < deadline:
            newest = newest_seq()
            query = DomainEvent.select().where((DomainEvent.seq > self.position) & (DomainEvent.seq <= newest))
            projects = None if self.filter.project_id is not None else self.access.projects()
            rows = list(self.filter.where(query, projects).order_by(DomainEvent.seq).limit(REPLAY_BATCH))
            frames = []
            for event in rows:
                self.position = event.seq
                item = event_body(event)
                if self.filter.accepts(item) and self.access.visible(event.project_id):
                    frames.append(render_event(item))
            if len(rows) < REPLAY_BATCH:
                self.position = max(self.position, newest)  # the rest up to `newest` did not match
            release_connection()
            if frames:
                self.sent += len(frames)
                yield b"".join(frames)
            if len(rows) < REPLAY_BATCH:
                return

    def _live(self, deadline: float):
        """Live events until the deadline (or the subscription closes); returns why it ended."""
        next_beat = time.monotonic() + self.heartbeat
        while True:
            now = time.monotonic()
            if now >= deadline:
                return "max-duration"
            if now >= next_beat:
                yield HEARTBEAT
                next_beat = time.monotonic() + self.heartbeat
                continue
            wait = min(deadline, next_beat) - now
            if self.subscription is None:  # no live fan-out in this process: poll the log
                time.sleep(min(wait, self.poll))
                yield from self._from_log(self.position, deadline)
                continue
            item = self.subscription.next(wait)
            if item is None:
                if self.subscription.closed:
                    return self.subscription.reason or "closed"
                continue
            frames = []
            for _ in range(LIVE_BATCH):  # what is queued already goes out in one write
                if item.seq is None or item.seq > self.position:  # else the replay covered it
                    if item.seq is not None:
                        self.position = item.seq
                    if self.access.visible(item.envelope.get("projectId")):
                        frames.append(frame_of(item))
                item = self.subscription.next_nowait()
                if item is None:
                    break
            if self.access.queried:  # (checking the connection costs ~9 µs per event and stream under gevent)
                self.access.queried = False
                release_connection()
            if frames:
                self.sent += len(frames)
                yield b"".join(frames)


def event_filter(principal: Principal, project, types: str | None, resources: str | None) -> EventFilter:
    """The filter of the tenant-wide stream (``project`` None) or one project's stream; parsed before the
    response starts (filters never reject)."""
    parsed_types = parse_types(types)
    if project is not None:
        tenant_id, project_id = project.tenant_id, project.id
    else:
        tenant_id = principal.tenant_id
        project_id = principal.project_id if principal.kind == "api_key" else None
    return EventFilter(
        tenant_id=tenant_id,
        project_id=project_id,
        tenant_level=project_id is None,
        types=None if parsed_types is None else parsed_types[0],
        prefixes=() if parsed_types is None else parsed_types[1],
        resources=parse_resources(resources),
        hidden=hidden_event_prefixes(principal),
    )


def open_stream(principal: Principal, project, types: str | None, resources: str | None,
                last_event_id: str | None, *, fanout, max_seconds: float, on_close=None) -> EventStream:
    """The body of a stream response (see the module documentation); nothing happens before it is iterated
    (``on_close`` is called once when it ends, also if it never started)."""
    chosen = event_filter(principal, project, types, resources)
    return EventStream(
        chosen,
        Access(principal, chosen.tenant_id, chosen.project_id, max_age=ACCESS_RECHECK_SECONDS),
        fanout=fanout,
        last_event_id=last_event_id,
        max_seconds=max_seconds,
        heartbeat=HEARTBEAT_SECONDS,
        poll=POLL_SECONDS,
        on_close=on_close,
    )


# ----------------------------------------------------------------- stream slots


#: Keeps "at most N open streams per principal" in Redis: drop slots whose time ran out (a process that died
#: without releasing them), refuse when N remain, else take one. KEYS[1] the principal's sorted set; ARGV: now,
#: limit, expiry of the new slot, its token, the key's time to live.
_ACQUIRE_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""
SLOT_KEY_PREFIX = "cortex:sse:streams:"
SLOT_GRACE_SECONDS = 60.0  # a slot outlives its stream's longest life by this much (then Redis forgets it)


class StreamSlots:
    """Open event streams per principal (``CORTEX_SSE_MAX_STREAMS_PER_PRINCIPAL``): :meth:`acquire` takes a slot
    before a stream starts and returns the function that frees it (the stream calls it when it ends, also when
    the client goes away), or None when the principal holds ``limit`` streams already.

    With ``REDIS_URL`` the slots are counted across every serving process (a sorted set per principal,
    ``cortex:sse:streams:<principal>``: one member per open stream, scored with the time it ends at the latest,
    so the slots of a process that died run out on their own); without it, or while Redis fails, per process.
    """

    def __init__(self, redis_url: str | None = None, clock=time.time):
        self.redis = RedisLink(redis_url, "event-stream slots")
        self.clock = clock
        self._local: dict[str, int] = {}
        self._script = None

    @staticmethod
    def owner(principal: Principal) -> str:
        """Whose slots a stream takes: the API key's, or the user's."""
        return f"key:{principal.api_key_id}" if principal.kind == "api_key" else f"user:{principal.user_id}"

    def acquire(self, principal: Principal, limit: int, max_seconds: float):
        """A slot for one more stream of ``principal`` (its release function), or None at ``limit``."""
        owner = self.owner(principal)
        client = self.redis.client()
        if client is not None:
            try:
                return self._acquire_shared(client, owner, limit, max_seconds)
            except Exception:
                self.redis.failed()
        return self._acquire_local(owner, limit)

    def held(self, principal: Principal) -> int:
        """How many slots this process holds for ``principal`` without Redis (tests, diagnostics)."""
        return self._local.get(self.owner(principal), 0)

    def _acquire_local(self, owner: str, limit: int):
        if self._local.get(owner, 0) >= limit:
            return None
        self._local[owner] = self._local.get(owner, 0) + 1  # no yield in between: greenlet-safe

        def release() -> None:
            left = self._local.get(owner, 1) - 1
            if left > 0:
                self._local[owner] = left
            else:
                self._local.pop(owner, None)

        return release

    def _acquire_shared(self, client, owner: str, limit: int, max_seconds: float):
        if self._script is None:
            self._script = client.register_script(_ACQUIRE_SCRIPT)
        key = SLOT_KEY_PREFIX + owner
        token = uuid.uuid4().hex
        now = self.clock()
        life = max_seconds + SLOT_GRACE_SECONDS
        if not self._script(keys=[key], args=[now, limit, now + life, token, math.ceil(life)]):
            return None

        def release() -> None:
            try:
                client.zrem(key, token)
            except Exception:  # the slot runs out on its own (SLOT_GRACE_SECONDS after the stream's longest life)
                self.redis.failed()

        return release
