"""Tests for tools/soak.py's invariant checks, on fabricated observations (no servers): a clean run passes, and
a lost event, a duplicate, a 5xx, an over-full gathering and an unshared rate limit are each reported. The soak
itself (two `cortex serve`, a `cortex worker`, PostgreSQL + Redis) runs in CI's PostgreSQL stage, not here."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOL_PATH = REPO_ROOT / "tools" / "soak.py"

_spec = importlib.util.spec_from_file_location("soak_under_test", TOOL_PATH)
assert _spec is not None and _spec.loader is not None
soak = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = soak  # its dataclasses look their module up while they are made
_spec.loader.exec_module(soak)

LogEvent, StreamRecord, HookRecord = soak.LogEvent, soak.StreamRecord, soak.HookRecord
GatheringRecord, BurstRequest = soak.GatheringRecord, soak.BurstRequest

MAIN, OTHER = "project-main", "project-other"
GATHERING = "g1"


def joined(seq: int, participant: str, gathering: str = GATHERING) -> LogEvent:
    return LogEvent(seq, f"e{seq}", MAIN, "gathering.member.joined", f"gathering:{gathering}",
                    {"gatheringId": gathering, "member": {"participantId": participant}})


def left(seq: int, participant: str, gathering: str = GATHERING) -> LogEvent:
    return LogEvent(seq, f"e{seq}", MAIN, "gathering.member.left", f"gathering:{gathering}",
                    {"gatheringId": gathering, "participantId": participant})


def log() -> list[LogEvent]:
    """A small log of the seeded tenant: the marker (seq 10), then a mix of types, projects and resources."""
    return [
        LogEvent(10, "e10", MAIN, "image.created", "session:s1"),  # the marker
        LogEvent(11, "e11", MAIN, "session.created", "session:s2"),
        LogEvent(12, "e12", MAIN, "message.created", "session:s1"),
        joined(13, "p1"),
        LogEvent(14, "e14", MAIN, "webhook.delivery.updated", "webhook:w1"),
        LogEvent(15, "e15", OTHER, "message.created", "session:s9"),
        joined(16, "p2"),
        left(17, "p1"),
        LogEvent(18, "e18", None, "tenant.updated", "tenant:t1"),
        joined(19, "p3"),
    ]


def ids(events, *, after: int = 10) -> list[str]:
    return [event.id for event in events if event.seq > after]


def streams(events) -> list[StreamRecord]:
    """One subscriber per filter, each having received exactly what it is owed, in order."""
    return [
        StreamRecord("all", 1, None, None, 10, ids(events)),
        StreamRecord("gatherings", 1, "gathering.*", None, 10, ["e13", "e16", "e17", "e19"]),
        StreamRecord("mixed", 2, "session.created,message.*", None, 10, ["e11", "e12", "e15"]),
        StreamRecord("one-session", 2, None, "session:s1", 10, ["e12"]),
    ]


def hooks() -> list[HookRecord]:
    return [
        HookRecord("all", MAIN, ["*"], 10, ["e11", "e12", "e13", "e16", "e17", "e19"]),
        HookRecord("lifecycle", MAIN, ["session.*", "gathering.member.*"], 12, ["e13", "e16", "e17", "e19"]),
    ]


def gatherings() -> list[GatheringRecord]:
    return [GatheringRecord(GATHERING, "CODE2345", 2, joins=3, full=4, leaves=1, max_answered=2, final_count=2,
                            final_seated=2)]


def burst(accepted: int = 100, limited: int = 150, second: float = 1000.0) -> list[BurstRequest]:
    """Requests answered inside one clock second, alternating the two processes."""
    statuses = [201] * accepted + [429] * limited
    return [BurstRequest(8001 + n % 2, second + 0.01 + n * 0.001, second + 0.02 + n * 0.002, status,
                         "1" if status == 429 else None) for n, status in enumerate(statuses)]


def observations(**changes) -> soak.Observations:
    events = log()
    fields = dict(events=events, cutoff=19, statuses=Counter({("ingest", 201): 5, ("joinByCode", 409): 2}),
                  failures=Counter(), server_5xx={}, streams=streams(events), hooks=hooks(),
                  gatherings=gatherings(), burst=burst())
    fields.update(changes)
    return soak.Observations(**fields)


def violations(obs) -> dict[str, list[str]]:
    return {name: problems for name, problems in soak.check_invariants(obs).items() if problems}


def test_a_clean_run_violates_nothing():
    assert violations(observations()) == {}


# ---------------------------------------------------------------- 1. no 5xx


def test_a_5xx_answer_is_reported():
    obs = observations(statuses=Counter({("ingest", 201): 5, ("createSession", 500): 1}))
    assert violations(obs) == {"1. no 5xx": ["5xx answers: createSession 500 × 1"]}


def test_unanswered_requests_and_server_counted_5xx_are_reported():
    problems = soak.check_statuses(Counter(), Counter({("joinByCode", "ConnectionResetError"): 2}),
                                   {"stream": 1.0})
    assert problems == ["requests without an answer: joinByCode ConnectionResetError × 2",
                        "5xx counted by the servers (cortex_http_requests_total): stream × 1"]
    assert soak.check_statuses(Counter(), Counter(), None) == [
        "the servers' /metrics could not be read: their 5xx count is unknown"]


def test_server_metrics_counts_5xx_by_operation_and_delivery_outcomes():
    text = "\n".join([
        "# HELP cortex_http_requests_total Answered requests",
        'cortex_http_requests_total{operation="ingest",status="201"} 900.0',
        'cortex_http_requests_total{operation="ingest",status="503"} 2.0',
        'cortex_http_requests_total{status="500",operation="unknown"} 1.0',
        'cortex_http_requests_total{operation="stream",status="500"} 0.0',
        'cortex_webhook_deliveries_total{outcome="delivered"} 40.0',
        'cortex_webhook_deliveries_total{outcome="retry"} 1.0',
    ])
    figures = {}
    assert soak.server_metrics(text, figures) == {"ingest": 2.0, "unknown": 1.0}
    assert figures["webhook_attempts_by_outcome"] == {"delivered": 40.0, "retry": 1.0}


# ---------------------------------------------------------------- 2. every event once


def test_a_webhook_delivery_lost_is_reported():
    broken = hooks()
    broken[0].received.remove("e16")
    [problem] = violations(observations(hooks=broken))["2. every event once (webhooks, SSE)"]
    assert problem.startswith("webhook all (*): 1 of 6 owed events were never delivered: e16")


def test_a_webhook_delivered_twice_unexpected_or_unsigned_is_reported():
    broken = hooks()
    broken[1].received += ["e16", "e12", "e14"]  # a duplicate, one before its start, a webhook.delivery.updated
    broken[1].bad_signatures = 1
    problems = violations(observations(hooks=broken))["2. every event once (webhooks, SSE)"]
    assert problems == [
        "webhook lifecycle (session.*, gathering.member.*): 1 events were delivered more than once: e16",
        "webhook lifecycle (session.*, gathering.member.*): 2 deliveries of events it does not subscribe to: e12, e14",
        "webhook lifecycle (session.*, gathering.member.*): 1 deliveries without a valid signature",
    ]


def test_webhooks_are_owed_their_projects_matching_events_after_their_start_but_never_delivery_updates():
    owed = soak.hook_owed(HookRecord("h", MAIN, ["*"], 12, []), log(), cutoff=17)
    assert [event.id for event in owed] == ["e13", "e16", "e17"]  # not e14 (delivery update), e15 (other project)


def test_an_sse_event_lost_is_reported():
    broken = streams(log())
    broken[1].received.remove("e17")
    [problem] = violations(observations(streams=broken))["2. every event once (webhooks, SSE)"]
    assert problem == "SSE gatherings (port 1): 1 of 4 owed events never arrived: e17"


def test_an_sse_duplicate_is_reported():
    broken = streams(log())
    broken[0].received.insert(3, "e12")  # a live copy of what the replay had sent
    [problem] = violations(observations(streams=broken))["2. every event once (webhooks, SSE)"]
    assert problem == "SSE all (port 1): 1 events arrived more than once: e12"


def test_sse_events_out_of_order_or_not_owed_are_reported():
    broken = streams(log())
    broken[2].received = ["e12", "e11", "e15"]
    broken[3].received = ["e10", "e12", "other-tenant"]  # the marker itself, an id the log does not hold
    problems = violations(observations(streams=broken))["2. every event once (webhooks, SSE)"]
    assert problems == [
        "SSE mixed (port 2): events out of log order 1 times (seq 12 then 11)",
        "SSE one-session (port 2): 2 events arrived that its filter or position does not owe it: e10, other-tenant",
    ]


def test_events_after_the_cutoff_are_neither_owed_nor_unexpected():
    obs = observations(cutoff=16)
    obs.streams[0].received = ids(obs.events)  # e17..e19 came after the cutoff
    obs.streams[1].received = ["e13", "e16"]
    obs.hooks[0].received = ["e11", "e12", "e13", "e16", "e17"]
    obs.hooks[1].received = ["e13", "e16"]
    obs.gatherings[0].final_count = obs.gatherings[0].final_seated = 2
    assert "2. every event once (webhooks, SSE)" not in violations(obs)


@pytest.mark.parametrize(("types", "event_type", "expected"), [
    (None, "session.created", True),
    ("*", "anything", True),
    (" , ", "session.created", True),  # empty items: no filter
    ("session.*", "session.updated", True),
    ("session.*", "sessions.x", False),
    ("session.created, participant.*", "participant.joined", True),
    ("session.created", "session.updated", False),
    ("sess*on.*", "session.created", False),  # only a trailing * is a wildcard
])
def test_stream_type_filters_follow_the_documented_rules(types, event_type, expected):
    assert soak.types_match(types, event_type) is expected


def test_stream_resource_filters_match_exactly():
    assert soak.resources_match(None, "session:1")
    assert soak.resources_match("session:1, session:2", "session:2")
    assert not soak.resources_match("session:1", "session:10")


@pytest.mark.parametrize(("patterns", "event_type", "expected"), [
    (["*"], "webhook.delivery.updated", True),
    (["message.*"], "message.created", True),
    (["message.*"], "message.annotation.created", True),
    (["gathering.*.joined"], "gathering.member.joined", True),
    (["session.created"], "session.updated", False),
    (["a.b"], "aXb", False),  # "." is literal
])
def test_webhook_patterns_take_star_as_any_run_of_characters(patterns, event_type, expected):
    assert soak.pattern_matches(patterns, event_type) is expected


# ---------------------------------------------------------------- 3. gathering capacity


def test_more_members_seated_than_capacity_is_reported():
    events = [*log(), joined(20, "p4")]  # p2, p3 and p4 seated in a gathering of 2
    record = GatheringRecord(GATHERING, "CODE2345", 2, joins=4, leaves=1, max_answered=3, final_count=3,
                             final_seated=3)
    problems = soak.check_gatherings([record], events)
    assert problems[:3] == [
        f"gathering {GATHERING} (players, capacity 2): the log seats 3 members at once",
        f"gathering {GATHERING} (players, capacity 2): a join answered memberCount 3",
        f"gathering {GATHERING} (players, capacity 2): memberCount 3 after the run",
    ]
    assert violations(observations(events=events, gatherings=[record]))["3. gathering capacity"] == problems


def test_counts_that_disagree_are_reported():
    record = gatherings()[0]
    record.leaves = 2  # the client thinks one more left than the log and the server say
    [problem] = soak.check_gatherings([record], log())
    assert "memberCount 2, 2 seated members listed, 2 seated by the log, 1 by the client" in problem


def test_a_rush_must_seat_exactly_its_capacity():
    events = [joined(31, "r1", "g2"), joined(32, "r2", "g2"), left(33, "r1", "g2"), left(34, "r2", "g2")]
    rush = GatheringRecord("g2", "RUSH2345", 3, kind="rush", joins=2, full=6, leaves=2, joiners=8, max_answered=2,
                           final_count=0, final_seated=0)
    assert soak.check_gatherings([rush], events) == [
        "gathering g2 (rush, capacity 3): 2 of 8 simultaneous joins succeeded (exactly 3 must)"]
    unread = GatheringRecord("g3", "X", 3)
    assert soak.check_gatherings([unread], []) == ["gathering g3 (players, capacity 3): could not be read after the run"]


def test_seated_timeline_replays_joins_and_leaves_in_log_order():
    assert soak.seated_timeline(GATHERING, log()) == (2, 2)
    assert soak.seated_timeline("elsewhere", log()) == (0, 0)


# ---------------------------------------------------------------- 4. ingest rate limit shared


def test_a_rate_limit_exceeded_across_processes_is_reported():
    problems = violations(observations(burst=burst(accepted=200, limited=50)))["4. ingest rate limit shared"]
    assert problems == [
        "rate limit: 200 ingests accepted within the second 1000 (limit 100; by process: {8001: 100, 8002: 100}) — "
        "the limit is not shared",
        "rate limit: 200 ingests accepted within 1 second(s) (at most 100)",
    ]


def test_a_429_without_retry_after_and_other_statuses_are_reported():
    requests = burst()
    requests[150] = BurstRequest(8001, 1000.5, 1000.6, 429, None)
    requests[151] = BurstRequest(8002, 1000.5, 1000.6, 500, None)
    assert soak.check_rate_limit(requests) == [
        "rate limit: burst answers other than 201/429: 500 × 1",
        "rate limit: 1 answers 429 without a Retry-After of whole seconds",
    ]


def test_a_burst_that_never_put_more_than_the_limit_into_one_second_is_inconclusive():
    spread = [BurstRequest(8001 + n % 2, 1000 + n * 0.01, 1000.5 + n * 0.01, 201, None) for n in range(150)]
    # every request straddles a second boundary or shares its second with at most 50 others
    assert soak.check_rate_limit(spread)[-1].startswith("rate limit: inconclusive: at most 50 burst requests")
    one_process = [BurstRequest(8001, r.sent, r.answered, r.status, r.retry_after) for r in burst()]
    assert soak.check_rate_limit(one_process)[-1].startswith("rate limit: inconclusive")
    assert soak.check_rate_limit([]) == ["rate limit: the burst sent no request"]


def test_requests_straddling_a_second_count_in_no_single_window():
    requests = [*burst(), *(BurstRequest(8001, 1000.9, 1001.1, 201, None) for _ in range(60))]
    assert soak.burst_windows(requests).keys() == {1000}
    assert soak.check_rate_limit(requests) == []  # 160 accepted over the 2 seconds the burst touched


# ---------------------------------------------------------------- the wire helpers and the command line


def test_dechunker_and_frames_survive_arbitrary_splits():
    body = b"retry:3000\n\n: heartbeat\n\nevent:a\ndata:{}\nid:e1\n\nid: e2\ndata:x\n\n: closed (max-duration)\n\n"
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:40], body[40:])) + b"0\r\n\r\n"
    for size in (1, 3, 1000):
        decoder, pending, frames = soak.Dechunker(), b"", []
        for start in range(0, len(chunked), size):
            parsed, pending = soak.parse_frames(pending + decoder.feed(chunked[start:start + size]))
            frames += parsed
        assert decoder.done
        assert [frame for frame in frames if frame != (None, None)] == [
            (None, "heartbeat"), ("e1", None), ("e2", None), (None, "closed (max-duration)")]


def test_the_soak_refuses_to_run_without_postgresql_and_redis(monkeypatch, capsys):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert soak.main([]) == 2
    assert "needs PostgreSQL" in capsys.readouterr().err
    assert soak.main(["--database-url", "sqlite:///x.db", "--redis-url", "redis://127.0.0.1/9"]) == 2
    assert soak.main(["--database-url", "postgresql://postgres@127.0.0.1/x"]) == 2
    assert "needs Redis" in capsys.readouterr().err
    assert soak.main(["--database-url", "postgresql://h/x", "--redis-url", "redis://h/9", "--ingest-rate", "150"]) == 2
