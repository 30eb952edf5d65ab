"""Voice analytics over HTTP: concurrent peers and active rooms per bucket, from presence spans; gates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cortex.integrations.bots import LocalBotDriver
from cortex.lib import crypto, odin
from models import presence
from models.participants import create_or_find_participant
from models.presence import record_join, record_leave
from models.sessions import create_session, stop_session
from models.settings import AppSettings

#: The analytics' clock in these tests: 2026-03-02 12:07:30 UTC, 2.5 minutes into the 5-minute bucket of 12:05.
NOW = datetime(2026, 3, 2, 12, 7, 30, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
BUCKET = NOW_MS // 300_000 * 300_000  # 12:05:00
MINUTE = 60_000
HOUR = 60 * MINUTE


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def peers(client, member, start, project=None, headers=None):
    return client.get(f"/api/projects/{(project or member.project).id}/voice/analytics?start={start}",
                      headers=member.headers if headers is None else headers)


def rooms(client, member, start, project=None, headers=None):
    return client.get(f"/api/projects/{(project or member.project).id}/voice/rooms-analytics?start={start}",
                      headers=member.headers if headers is None else headers)


@pytest.fixture
def clock(monkeypatch):
    """Pin the analytics' "now" to NOW."""
    monkeypatch.setattr(presence, "utcnow", lambda: NOW)
    return NOW


@pytest.fixture
def room(owner):
    """Factory: an active session of the owner's project in this external room."""
    AppSettings.create(project=owner.project.id, token_provider_type="access_key", bot_user_id="bot",
                       access_key_encrypted=crypto.encrypt(odin.generate_access_key()))

    def make(external_room_id: str):
        return create_session(owner.project, owner.user.id, "Chat", external_room_id, driver=LocalBotDriver())

    return make


def stay(session, user: str, joined: int, left: int | None = None) -> None:
    """A participant's stay in the session's room, times in Unix ms."""
    person = create_or_find_participant(session.project, user)[0]
    record_join(session, person, f"{user}-peer", at=at(joined))
    if left is not None:
        record_leave(session, person, f"{user}-peer", at=at(left))


# ---------------------------------------------------------------- values


def test_peers_over_time(client, owner, room, clock):
    lobby = room("lobby")
    stay(lobby, "ann", BUCKET - HOUR)  # present all along
    stay(lobby, "ben", BUCKET - 8 * MINUTE, BUCKET - 6 * MINUTE)  # 2 min of the first bucket
    stay(lobby, "cid", BUCKET - 4 * MINUTE, BUCKET + MINUTE)  # 4 min of the second, 1 min of the current
    stay(lobby, "dan", BUCKET - 3 * HOUR, BUCKET - 2 * HOUR)  # before the range
    response = peers(client, owner, (BUCKET - 10 * MINUTE) / 1000)
    assert response.status_code == 200
    assert response.get_json() == {
        "peak": [[BUCKET - 10 * MINUTE, 2], [BUCKET - 5 * MINUTE, 2], [BUCKET, 2]],
        # (5 + 2) / 5, (5 + 4) / 5, and the current bucket over its 2.5 elapsed minutes: (2.5 + 1) / 2.5
        "average": [[BUCKET - 10 * MINUTE, 1.4], [BUCKET - 5 * MINUTE, 1.8], [BUCKET, 1.4]],
    }


def test_rooms_over_time_count_distinct_rooms(client, owner, room, clock):
    first_lobby, second_lobby, arena = room("lobby"), room("lobby"), room("arena")
    stay(first_lobby, "ann", BUCKET - 5 * MINUTE)
    stay(second_lobby, "ben", BUCKET - 5 * MINUTE)  # another session in the same room: still one room
    stay(arena, "cid", BUCKET - 4 * MINUTE, BUCKET - 2 * MINUTE)
    response = rooms(client, owner, (BUCKET - 5 * MINUTE) / 1000)
    assert response.status_code == 200
    assert response.get_json() == {
        "peak": [[BUCKET - 5 * MINUTE, 2], [BUCKET, 1]],
        "average": [[BUCKET - 5 * MINUTE, 1.4], [BUCKET, 1]],  # lobby 5 + arena 2 room-minutes / 5
    }
    assert peers(client, owner, (BUCKET - 5 * MINUTE) / 1000).get_json()["peak"] == [
        [BUCKET - 5 * MINUTE, 3], [BUCKET, 2]]


def test_a_stopped_session_stops_counting(client, owner, room, monkeypatch):
    lobby = room("lobby")
    stay(lobby, "ann", int(datetime.now(UTC).timestamp() * 1000) - 10 * MINUTE)  # still present
    stopped = stop_session(owner.project, lobby.id, LocalBotDriver())  # closes ann's span at the stop
    stop_ms = int(stopped.updated_at.timestamp() * 1000)
    monkeypatch.setattr(presence, "utcnow", lambda: stopped.updated_at + timedelta(minutes=10))
    body = peers(client, owner, (stop_ms - 15 * MINUTE) / 1000).get_json()
    by_bucket = dict(body["peak"])
    assert by_bucket[stop_ms // (5 * MINUTE) * (5 * MINUTE)] == 1  # present until the stop
    assert body["peak"][-1][1] == 0 and body["average"][-1][1] == 0  # the current bucket began after it


def test_only_the_projects_own_presence_counts(client, owner, stranger, room, clock):
    stay(room("lobby"), "ann", BUCKET - HOUR)
    mine = peers(client, owner, (BUCKET - 5 * MINUTE) / 1000).get_json()
    theirs = peers(client, stranger, (BUCKET - 5 * MINUTE) / 1000).get_json()
    assert [p[1] for p in mine["peak"]] == [1, 1]
    assert [p[1] for p in theirs["peak"]] == [0, 0] and [a[1] for a in theirs["average"]] == [0, 0]


# ---------------------------------------------------------------- the range: bucket sizes, clamping, now


@pytest.mark.parametrize(("hours_ago", "bucket"), [(2, 5 * MINUTE), (24, 5 * MINUTE), (25, HOUR), (7 * 24, HOUR),
                                                   (8 * 24, 6 * HOUR), (31 * 24, 6 * HOUR)])
def test_buckets_are_aligned_and_sized_by_the_range(client, owner, clock, hours_ago, bucket):
    start_ms = NOW_MS - hours_ago * HOUR
    for response in (peers(client, owner, start_ms / 1000), rooms(client, owner, start_ms / 1000)):
        assert response.status_code == 200
        body = response.get_json()
        starts = [entry[0] for entry in body["peak"]]
        assert starts == [entry[0] for entry in body["average"]]
        assert all(b - a == bucket for a, b in zip(starts, starts[1:], strict=False))
        assert all(s % bucket == 0 for s in starts)  # aligned to Unix time
        assert starts[0] <= start_ms < starts[0] + bucket  # the first bucket contains start
        assert starts[-1] <= NOW_MS < starts[-1] + bucket  # the last one is the current, partial bucket
        assert {entry[1] for entry in body["peak"] + body["average"]} == {0}


@pytest.mark.parametrize("start", ["0", "-5", "-1e300", "-inf", str(NOW.timestamp() - 90 * 86400)])
def test_start_is_clamped_to_31_days(client, owner, clock, start):
    body = peers(client, owner, start).get_json()
    first, last = body["peak"][0][0], body["peak"][-1][0]
    clamped = NOW_MS - 31 * 24 * HOUR
    assert first <= clamped < first + 6 * HOUR and last <= NOW_MS < last + 6 * HOUR
    assert len(body["peak"]) == len(body["average"]) == (last - first) // (6 * HOUR) + 1


@pytest.mark.parametrize("start", [str(NOW.timestamp() + 60), "1e300", "inf"])
def test_a_start_in_the_future_answers_empty_series(client, owner, clock, start):
    for response in (peers(client, owner, start), rooms(client, owner, start)):
        assert response.status_code == 200
        assert response.get_json() == {"peak": [], "average": []}


@pytest.mark.parametrize("start", ["nan", "NaN", "yesterday", ""])
def test_a_start_that_is_no_number_is_400(client, owner, clock, start):
    for response in (peers(client, owner, start), rooms(client, owner, start)):
        assert response.status_code == 400
        assert response.mimetype == "application/problem+json"
        assert "start" in response.get_json()["detail"]


def test_start_is_required(client, owner):
    response = client.get(f"/api/projects/{owner.project.id}/voice/analytics", headers=owner.headers)
    assert response.status_code == 400


def test_the_range_ends_now_without_a_pinned_clock(client, owner):
    """Unpinned: the real clock; an hour ago gives 13 or 14 five-minute buckets ending with the current one."""
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    body = peers(client, owner, (now_ms - HOUR) / 1000).get_json()
    starts = [entry[0] for entry in body["peak"]]
    assert len(starts) in (13, 14)
    assert starts[-1] <= now_ms < starts[-1] + 5 * MINUTE + 2000
    assert starts[-1] >= int((datetime.now(UTC) - timedelta(minutes=5)).timestamp() * 1000) - 2000


# ---------------------------------------------------------------- gates


@pytest.mark.parametrize("path", ["analytics", "rooms-analytics"])
def test_gates(client, owner, stranger, add_member, api_key_headers, path):
    def get(project_ref, headers):
        return client.get(f"/api/projects/{project_ref}/voice/{path}?start=0", headers=headers)

    assert get(owner.project.id, {}).status_code == 401
    assert get(stranger.project.id, owner.headers).status_code == 404  # another tenant's project
    assert get("no-such-project", owner.headers).status_code == 404
    assert get(owner.project.id, stranger.headers).status_code == 404
    assert get(owner.project.id, add_member("developer").headers).status_code == 200  # the lowest role may read
    assert get(owner.project.app_id, owner.headers).status_code == 200  # addressed by appId
    assert get(owner.project.id, api_key_headers(["voice:read"])).status_code == 200
    assert get(owner.project.id, api_key_headers(["voice:write", "sessions:read"])).status_code == 403
