"""Presence: who is (and was) in a session's voice room, as spans of time.

A span opens on ``participant.joined`` (signed ingest) and closes on ``participant.left``; an open span has
``left_at`` None. Spans are half-open intervals ``[joined_at, left_at)``: a peer leaving at the instant another
joins never counts twice.

The span table (``PresenceSpan``) lives beside ``Session`` in ``models.sessions``, which closes a session's spans
when it ends and selects idle sessions; this module records joins and leaves and computes what presence says.

- **Sessions that end close their spans.** When a session reaches ``stopped`` or ``error``
  (``models.sessions._change_status``) every open span of it closes at that moment: the bot no longer sees
  the room, so nobody can report the leaves. A join reported for a session already ``stopped``/``error`` is
  recorded closed (at the stop, or at the join when it is later): history, never presence. So an open span
  always belongs to a live session, and a lost ``participant.left`` cannot hold presence open forever.
- **Idle auto-stop** (``models.sessions.idle_sessions``, ``cortex.engines.idle.IdleSessionSweeper``): a session with
  ``idle_timeout`` > 0 in ``starting``/``active`` whose room has had no open span for ``idle_timeout`` seconds
  stops. Idle since = the later of its last span's ``left_at`` and its last status change
  (``Session.status_changed_at``, i.e. when it became ``starting``/``active``).
- **Voice analytics** (:func:`peers_over_time`, :func:`rooms_over_time`): concurrent peers (open spans) and
  active rooms (distinct ``external_room_id`` with at least one open span) per time bucket.
- **Peer limit**: :func:`project_present_count` is what ``POST …/token`` compares with the voice peer limit.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable
from datetime import UTC, datetime

from models.base import DomainError, as_utc, is_sqlite, utcnow
from models.participants import Participant
from models.sessions import ENDED, PresenceSpan, Session, closing_time, unix_ms

MODELS = [PresenceSpan]


def _open(session: Session, participant: Participant, peer_id: str | None):
    query = PresenceSpan.select().where(
        PresenceSpan.session == session.id,
        PresenceSpan.participant == participant.id,
        PresenceSpan.left_at.is_null(),
    )
    return query.where(PresenceSpan.peer_id == peer_id) if peer_id is not None else query


def _current_status(session: Session) -> tuple[str, datetime | None]:
    """The session's status and last status change, re-read and row-locked on PostgreSQL: a concurrent stop that
    closes the session's spans is then ordered before or after this join/leave, never interleaved."""
    query = Session.select(Session.status, Session.status_changed_at, Session.updated_at).where(Session.id == session.id)
    row = (query if is_sqlite() else query.for_update()).first()
    if row is None:  # deleted meanwhile: the insert below fails on the foreign key like before
        return session.status, None
    return row.status, row.status_changed_at or row.updated_at


def record_join(session: Session, participant: Participant, peer_id: str | None, at: datetime | None = None):
    """Open a span for this participant (and peer) in the session; (span, opened).

    Idempotent: a join repeated while the same participant/peer is still present opens nothing new (the open
    span, False). A join for a session that is ``stopped``/``error`` is kept as history but closed at once, at
    the stop (or at the join, when that is later): (closed span, False) — nobody is present in an ended
    session.
    """
    at = as_utc(at) or utcnow()
    status, ended_at = _current_status(session)
    if status not in ENDED:
        existing = _open(session, participant, peer_id).first()
        if existing is not None:
            return existing, False
    left_at = None
    if status in ENDED:
        left_at = max(at, ended_at) if ended_at is not None else at
    span = PresenceSpan.create(
        project=session.project_id,
        session=session.id,
        participant=participant.id,
        external_user_id=participant.external_user_id,
        peer_id=peer_id,
        joined_at=at,
        left_at=left_at,
    )
    return span, left_at is None


def record_leave(session: Session, participant: Participant, peer_id: str | None, at: datetime | None = None) -> int:
    """Close the participant's open spans in the session (only that peer's when ``peer_id`` is given).

    Returns how many spans were closed (0 for a leave without a join: nothing to close). A leave reported with
    a time before the join closes the span at its join (a zero-length stay).
    """
    at = as_utc(at) or utcnow()
    _current_status(session)  # lock order: the session row first, like a stop that closes the spans
    ids = [span.id for span in _open(session, participant, peer_id).select(PresenceSpan.id)]
    if not ids:
        return 0
    return PresenceSpan.update(left_at=closing_time(at)).where(PresenceSpan.id.in_(ids)).execute()


def present_count(session_id: str) -> int:
    """How many spans of the session are open right now."""
    return PresenceSpan.select().where(PresenceSpan.session == session_id, PresenceSpan.left_at.is_null()).count()


def project_present_count(project_id: str) -> int:
    """How many peers are present across the project's sessions right now (open spans)."""
    return PresenceSpan.select().where(PresenceSpan.project == project_id, PresenceSpan.left_at.is_null()).count()


# ---------------------------------------------------------------- voice analytics

#: ``start`` is clamped to at most this long ago (seconds).
MAX_RANGE = 31 * 86400
#: (longest range in seconds, bucket size in seconds): 5 min up to 24 h, 1 h up to 7 days, 6 h beyond.
BUCKETS = ((86400, 300), (7 * 86400, 3600), (math.inf, 6 * 3600))


def bucket_seconds(range_seconds: float) -> int:
    """The bucket size for a range of this length."""
    return next(size for longest, size in BUCKETS if range_seconds <= longest)


def analytics_window(start, now: datetime) -> tuple[int, int, int] | None:
    """(first bucket start, bucket size, end), all in Unix ms, for a requested ``start`` (Unix seconds).

    ``start`` is clamped to at most MAX_RANGE ago (negative or -inf included); the range ends at ``now``; the
    first bucket is the aligned one containing the clamped start. None for a ``start`` after ``now`` (an empty
    series). DomainError invalid for NaN or a non-number.
    """
    if isinstance(start, bool) or not isinstance(start, int | float) or math.isnan(start):
        raise DomainError("invalid", f"start must be a Unix timestamp in seconds, not {start!r}")
    end = unix_ms(now)
    if start * 1000 > end:
        return None
    start_ms = max(start * 1000, end - MAX_RANGE * 1000)  # a float; -inf clamps too
    size = bucket_seconds((end - start_ms) / 1000) * 1000
    return math.floor(start_ms / size) * size, size, end


def series(intervals: Iterable[tuple[int, int, Hashable]], first: int, size: int, end: int,
           distinct: bool = False) -> dict:
    """Peak and time-weighted average per bucket of how many intervals (or distinct keys) are open.

    ``intervals``: ``(start, end, key)`` in ms, half-open (one ending after ``end`` is open at ``end``).
    ``distinct``: count the keys with at least one open interval instead of the intervals. Buckets
    ``[b, b + size)`` from ``first`` (aligned) to the one containing ``end``, which is cut at ``end`` (its average
    is over the elapsed part; one that starts exactly at ``end`` reports the state at ``end``). Each entry is
    ``[bucket start ms, value]``; averages are rounded to 3 decimals. A sweep over the sorted boundaries:
    O(n log n + buckets).
    """
    changes: dict[int, list[tuple[int, Hashable]]] = defaultdict(list)
    for begin, finish, key in intervals:
        if finish <= begin or begin > end:
            continue
        changes[begin].append((1, key))
        if finish <= end:  # an interval running past the end is still open at the end
            changes[finish].append((-1, key))
    times = sorted(changes)
    per_key: dict[Hashable, int] = defaultdict(int)
    count = 0

    def apply(at: int) -> None:
        nonlocal count
        for delta, key in changes[at]:
            if not distinct:
                count += delta
                continue
            before = per_key[key]
            per_key[key] = before + delta
            count += (before + delta > 0) - (before > 0)

    peaks, averages = [], []
    index, bucket = 0, first
    while bucket <= end:
        stop = min(bucket + size, end)
        while index < len(times) and times[index] <= bucket:  # the state at the bucket's start
            apply(times[index])
            index += 1
        peak, area, at = count, 0, bucket
        while index < len(times) and times[index] < stop:
            area += count * (times[index] - at)
            at = times[index]
            apply(at)
            index += 1
            peak = max(peak, count)
        area += count * (stop - at)
        average = area / (stop - bucket) if stop > bucket else count
        peaks.append([bucket, peak])
        averages.append([bucket, round(average, 3)])
        bucket += size
    return {"peak": peaks, "average": averages}


def _spans_overlapping(project_id: str, since: int, end: int, with_room: bool):
    """(joined ms, left ms or past the end, room or None) of the project's spans overlapping [since, end]: one
    query."""
    since_at = datetime.fromtimestamp(since / 1000, UTC)
    end_at = datetime.fromtimestamp(end / 1000, UTC)
    columns = [PresenceSpan.joined_at, PresenceSpan.left_at]
    query = PresenceSpan.select(*columns, *([Session.external_room_id] if with_room else []))
    if with_room:
        query = query.join(Session, on=(PresenceSpan.session == Session.id))
    query = query.where(
        (PresenceSpan.project == project_id)
        & (PresenceSpan.left_at.is_null() | (PresenceSpan.left_at > since_at))
        & (PresenceSpan.joined_at <= end_at)
    )
    for row in query.tuples().iterator():
        joined, left = row[0], row[1]
        yield unix_ms(joined), end + 1 if left is None else unix_ms(left), row[2] if with_room else None


def _over_time(project_id: str, start, now: datetime | None, rooms: bool) -> dict:
    now = as_utc(now) or utcnow()
    window = analytics_window(start, now)
    if window is None:
        return {"peak": [], "average": []}
    first, size, end = window
    return series(_spans_overlapping(project_id, first, end, rooms), first, size, end, distinct=rooms)


def peers_over_time(project_id: str, start, now: datetime | None = None) -> dict:
    """PeersOverTime: concurrent peers (open spans) of the project per bucket since ``start`` (Unix seconds)."""
    return _over_time(project_id, start, now, rooms=False)


def rooms_over_time(project_id: str, start, now: datetime | None = None) -> dict:
    """RoomsOverTime: active rooms — distinct ``external_room_id`` of the project's sessions with at least one
    open span — per bucket since ``start`` (Unix seconds)."""
    return _over_time(project_id, start, now, rooms=True)
