"""Presence spans without HTTP: join/leave, spans closed when a session ends, the idle query, analytics sweeps."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from cortex.integrations.bots import LocalBotDriver
from cortex.lib import crypto, odin
from models.base import DomainError, utcnow
from models.participants import create_or_find_participant
from models.presence import (
    MAX_RANGE,
    analytics_window,
    bucket_seconds,
    peers_over_time,
    present_count,
    project_present_count,
    record_join,
    record_leave,
    rooms_over_time,
    series,
)
from models.sessions import (
    PresenceSpan,
    Session,
    close_open_spans,
    create_session,
    idle_sessions,
    set_session_status,
    stop_session,
)
from models.settings import AppSettings

#: A fixed "now" for the analytics: 2026-03-02 12:07:30 UTC (inside a 5-minute bucket starting 12:05:00).
NOW = datetime(2026, 3, 2, 12, 7, 30, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
MINUTE = 60_000


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@pytest.fixture
def project(owner):
    AppSettings.create(project=owner.project.id, token_provider_type="access_key", bot_user_id="bot",
                       access_key_encrypted=crypto.encrypt(odin.generate_access_key()))
    return owner.project


@pytest.fixture
def new_session(project, owner):
    def make(room: str = "room-1", start: bool = True, **kw) -> Session:
        return create_session(project, owner.user.id, "Standup", room, auto_start=start,
                              driver=LocalBotDriver() if start else None, **kw)

    return make


@pytest.fixture
def person(project):
    def make(external_id: str = "player-1"):
        return create_or_find_participant(project, external_id)[0]

    return make


# ---------------------------------------------------------------- join and leave


def test_join_opens_a_span_and_a_repeated_join_is_idempotent(new_session, person):
    session, alice = new_session(), person("alice")
    span, opened = record_join(session, alice, "peer-1")
    assert opened and span.left_at is None
    assert (span.project_id, span.external_user_id, span.peer_id) == (session.project_id, "alice", "peer-1")
    again, opened_again = record_join(session, alice, "peer-1")
    assert (again.id, opened_again) == (span.id, False)
    second_peer, opened = record_join(session, alice, "peer-2")  # a second connection of the same participant
    assert opened and second_peer.id != span.id
    assert present_count(session.id) == 2 == PresenceSpan.select().count()


def test_leave_closes_only_the_given_peer_and_a_leave_without_join_closes_nothing(new_session, person):
    session, alice, bob = new_session(), person("alice"), person("bob")
    assert record_leave(session, alice, "peer-1") == 0  # never joined
    record_join(session, alice, "peer-1")
    record_join(session, alice, "peer-2")
    record_join(session, bob, None)
    left = utcnow()
    assert record_leave(session, alice, "peer-1", at=left) == 1
    assert record_leave(session, alice, "peer-1") == 0  # already left
    assert present_count(session.id) == 2
    closed = PresenceSpan.get(PresenceSpan.peer_id == "peer-1")
    assert closed.left_at == left
    assert record_leave(session, bob, None) == 1
    assert record_leave(session, alice, None) == 1  # no peer id: every open span of the participant
    assert present_count(session.id) == 0


def test_a_leave_reported_before_the_join_is_a_zero_length_stay(new_session, person):
    session, alice = new_session(), person("alice")
    joined = utcnow()
    record_join(session, alice, "p", at=joined)
    assert record_leave(session, alice, "p", at=joined - timedelta(seconds=5)) == 1
    span = PresenceSpan.get()
    assert span.left_at == span.joined_at == joined


def test_a_stopping_session_closes_its_open_spans_when_it_stops(new_session, person, project):
    session, other = new_session(), new_session("room-2")
    alice, bob = person("alice"), person("bob")
    record_join(session, alice, "a")
    record_join(session, bob, "b", at=utcnow() - timedelta(minutes=1))
    record_leave(session, bob, "b", at=utcnow() - timedelta(seconds=30))
    record_join(other, alice, "a2")
    bob_left = PresenceSpan.get(PresenceSpan.peer_id == "b").left_at

    stopped = stop_session(project, session.id, LocalBotDriver())
    assert stopped.status == "stopped"
    assert present_count(session.id) == 0
    assert PresenceSpan.get(PresenceSpan.peer_id == "a").left_at == stopped.updated_at  # closed at the stop
    assert PresenceSpan.get(PresenceSpan.peer_id == "b").left_at == bob_left  # a closed span keeps its time
    assert present_count(other.id) == 1  # another session's room is untouched
    assert project_present_count(project.id) == 1


def test_a_session_in_error_closes_its_spans(new_session, person):
    session = new_session()
    record_join(session, person(), "p")
    set_session_status(session.id, "error", source="cortex:ingest")
    assert present_count(session.id) == 0


def test_a_join_for_an_ended_session_is_history_not_presence(new_session, person, project):
    session, alice = new_session(), person("alice")
    stopped = stop_session(project, session.id, LocalBotDriver())
    late, opened = record_join(session, alice, "p", at=stopped.updated_at - timedelta(seconds=10))
    assert not opened and late.left_at == stopped.updated_at  # it happened before the stop: closed at the stop
    after = stopped.updated_at + timedelta(seconds=10)
    span, opened = record_join(session, alice, "p", at=after)
    assert not opened and span.joined_at == span.left_at == after
    assert present_count(session.id) == 0 and project_present_count(project.id) == 0


def test_close_open_spans_never_closes_a_span_before_its_join(new_session, person):
    session = new_session()
    future = utcnow() + timedelta(minutes=5)
    record_join(session, person(), "p", at=future)
    assert close_open_spans(session.id, utcnow()) == 1
    span = PresenceSpan.get()
    assert span.left_at == span.joined_at == future


def test_presence_goes_with_its_session_and_participant(new_session, person):
    session, alice = new_session(), person("alice")
    record_join(session, alice, "p")
    alice.delete_instance()
    assert PresenceSpan.select().count() == 0


# ---------------------------------------------------------------- the idle query (one statement)


def test_idle_sessions_selects_only_sessions_due(new_session, person):
    now = utcnow()
    due = new_session("r-due", idle_timeout=60)
    present = new_session("r-present", idle_timeout=60)
    recent = new_session("r-recent", idle_timeout=60)
    new_session("r-none")  # no idle timeout
    new_session("r-zero", idle_timeout=0)
    new_session("r-created", start=False, idle_timeout=1)  # never started
    record_join(present, person("alice"), "a", at=now - timedelta(hours=1))
    record_join(recent, person("bob"), "b", at=now - timedelta(hours=1))
    record_leave(recent, person("bob"), "b", at=now + timedelta(seconds=30))
    later = now + timedelta(seconds=61)
    assert {s.id for s in idle_sessions(later)} == {due.id}
    assert {s.id for s in idle_sessions(now + timedelta(seconds=91))} == {due.id, recent.id}
    assert list(idle_sessions(now)) == []  # nobody idle for 60 s yet


# ---------------------------------------------------------------- analytics: window and buckets


@pytest.mark.parametrize(("hours", "size"), [(0, 300), (1, 300), (24, 300), (24.001, 3600), (7 * 24, 3600),
                                             (7 * 24 + 0.001, 21600), (31 * 24, 21600)])
def test_bucket_sizes_follow_the_range_length(hours, size):
    assert bucket_seconds(hours * 3600) == size
    first, bucket, end = analytics_window(NOW.timestamp() - hours * 3600, NOW)
    assert bucket == size * 1000 and end == NOW_MS
    assert first % bucket == 0 and first <= NOW_MS - hours * 3_600_000 < first + bucket


@pytest.mark.parametrize("start", [0, -1, -1e300, -math.inf, NOW.timestamp() - 40 * 86400])
def test_start_is_clamped_to_31_days_ago(start):
    first, size, end = analytics_window(start, NOW)
    assert size == 21600 * 1000
    assert first == (NOW_MS - MAX_RANGE * 1000) // size * size


@pytest.mark.parametrize("start", [NOW.timestamp() + 1, math.inf, 1e300])
def test_a_start_in_the_future_is_an_empty_window(start, project):
    assert analytics_window(start, NOW) is None
    assert peers_over_time(project.id, start, NOW) == {"peak": [], "average": []}


@pytest.mark.parametrize("start", [math.nan, "1700000000", None, True])
def test_a_start_that_is_not_a_number_is_invalid(start):
    with pytest.raises(DomainError) as caught:
        analytics_window(start, NOW)
    assert caught.value.kind == "invalid"


def test_series_peak_and_time_weighted_average():
    size = 5 * MINUTE
    intervals = [
        (0, 10 * MINUTE, "a"),  # the whole first two buckets
        (MINUTE, 2 * MINUTE, "b"),  # 1 min of bucket 0: peak 2, average 1.2
        (2 * MINUTE, 4 * MINUTE, "c"),  # hand-over with b at 2 min: never 3 at once
        (6 * MINUTE, 6 * MINUTE, "z"),  # zero length: ignored
        (7 * MINUTE, 20 * MINUTE, "d"),  # runs past the end: cut at the end
    ]
    result = series(intervals, 0, size, 12 * MINUTE)
    assert result["peak"] == [[0, 2], [size, 2], [2 * size, 1]]
    # bucket 0: a 5 min + b 1 min + c 2 min = 8 peer-minutes / 5; bucket 1: a 5 + d 3 = 8 / 5;
    # bucket 2 (current, 2 of its 5 minutes elapsed): d only → 1.
    assert result["average"] == [[0, 1.6], [size, 1.6], [2 * size, 1.0]]


def test_series_counts_distinct_keys_for_rooms():
    intervals = [(0, 4 * MINUTE, "lobby"), (MINUTE, 3 * MINUTE, "lobby"), (2 * MINUTE, 5 * MINUTE, "arena")]
    rooms = series(intervals, 0, 5 * MINUTE, 5 * MINUTE, distinct=True)
    peers = series(intervals, 0, 5 * MINUTE, 5 * MINUTE)
    assert rooms["peak"][0] == [0, 2] and peers["peak"][0] == [0, 3]
    # lobby 4 min + arena 3 min = 7 room-minutes / 5
    assert rooms["average"][0] == [0, 1.4]
    assert peers["average"][0] == [0, round((4 + 2 + 3) / 5, 3)]


def test_series_of_a_bucket_that_just_began_is_its_state_at_the_start():
    result = series([(0, 20 * MINUTE, "a")], 0, 5 * MINUTE, 10 * MINUTE)
    assert result["peak"][-1] == [10 * MINUTE, 1] and result["average"][-1] == [10 * MINUTE, 1]


def _spans(session, person, *pairs):
    for index, (joined, left) in enumerate(pairs):
        span, _ = record_join(session, person(f"user-{index}"), f"peer-{index}", at=at(joined))
        if left is not None:
            record_leave(session, person(f"user-{index}"), f"peer-{index}", at=at(left))


def test_peers_over_time_from_stored_spans(new_session, person, project):
    session = new_session()
    bucket = NOW_MS // (5 * MINUTE) * (5 * MINUTE)  # 12:05:00, the current bucket (2.5 min elapsed)
    _spans(
        session, person,
        (bucket - 20 * MINUTE, None),  # present all along (still open)
        (bucket - 9 * MINUTE, bucket - 7 * MINUTE),  # 2 min inside the bucket before the previous one
        (bucket - 3 * MINUTE, bucket + MINUTE),  # 3 min of the previous bucket, 1 min of the current one
        (bucket - 90 * MINUTE, bucket - 80 * MINUTE),  # before the range: not counted
    )
    result = peers_over_time(project.id, (bucket - 10 * MINUTE) / 1000, NOW)
    starts = [bucket - 10 * MINUTE, bucket - 5 * MINUTE, bucket]
    assert [p[0] for p in result["peak"]] == starts == [a[0] for a in result["average"]]
    assert [p[1] for p in result["peak"]] == [2, 2, 2]
    assert [a[1] for a in result["average"]] == [(5 + 2) / 5, (5 + 3) / 5, round((2.5 + 1) / 2.5, 3)]


def test_rooms_over_time_counts_distinct_rooms(new_session, person, project):
    lobby_a, lobby_b, arena = new_session("lobby"), new_session("lobby"), new_session("arena")
    bucket = NOW_MS // (5 * MINUTE) * (5 * MINUTE)
    record_join(lobby_a, person("a"), "a", at=at(bucket - 5 * MINUTE))
    record_join(lobby_b, person("b"), "b", at=at(bucket - 5 * MINUTE))  # same room, another session
    record_join(arena, person("c"), "c", at=at(bucket - 4 * MINUTE))
    record_leave(arena, person("c"), "c", at=at(bucket - 2 * MINUTE))
    rooms = rooms_over_time(project.id, (bucket - 5 * MINUTE) / 1000, NOW)
    assert rooms["peak"] == [[bucket - 5 * MINUTE, 2], [bucket, 1]]
    assert rooms["average"] == [[bucket - 5 * MINUTE, 1.4], [bucket, 1]]
    peers = peers_over_time(project.id, (bucket - 5 * MINUTE) / 1000, NOW)
    assert peers["peak"] == [[bucket - 5 * MINUTE, 3], [bucket, 2]]


def test_analytics_are_per_project(new_session, person, project, stranger):
    record_join(new_session(), person("a"), "a", at=NOW - timedelta(minutes=1))
    start = (NOW - timedelta(minutes=5)).timestamp()
    assert max(p[1] for p in peers_over_time(project.id, start, NOW)["peak"]) == 1
    assert all(p[1] == 0 for p in peers_over_time(stranger.project.id, start, NOW)["peak"])


def test_a_month_has_6_hour_buckets_up_to_now(project):
    result = peers_over_time(project.id, 0, NOW)
    starts = [p[0] for p in result["peak"]]
    assert all(b - a == 6 * 3_600_000 for a, b in zip(starts, starts[1:], strict=False))
    assert starts[0] <= NOW_MS - MAX_RANGE * 1000 < starts[0] + 6 * 3_600_000
    assert starts[-1] <= NOW_MS < starts[-1] + 6 * 3_600_000
    assert {p[1] for p in result["peak"]} == {0} and {a[1] for a in result["average"]} == {0}
