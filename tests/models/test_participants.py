"""Participant domain rules without HTTP: create-or-find (also under concurrency), update, delete, events,
listing bounds and search patterns."""

from __future__ import annotations

import math
import threading

import pytest

from models import events, participants
from models.base import DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET, DomainError, db, page_bounds
from models.events import DomainEvent
from models.participants import (
    KEEP,
    Participant,
    create_or_find_participant,
    delete_participant,
    get_participant,
    list_participants,
    participant_body,
    search_pattern,
    update_participant,
)


@pytest.fixture
def project(owner):
    return owner.project


def log() -> list[DomainEvent]:
    return list(DomainEvent.select().order_by(DomainEvent.seq))


def test_create_then_find(project):
    row, created = create_or_find_participant(project, "ext-1")
    assert created is True
    assert (row.display_name, row.user_data, row.tenant_id) == ("ext-1", {}, project.tenant_id)
    assert row.joined_at == row.created_at
    again, created = create_or_find_participant(project, "ext-1")
    assert created is False and again.id == row.id
    assert participant_body(again) == participant_body(row)
    [event] = log()
    assert event.type == "participant.created" and event.payload["data"] == participant_body(row)


def test_find_updates_only_given_fields_that_differ(project):
    row, _ = create_or_find_participant(project, "ext-1", "Ada", {"a": 1})
    same, _ = create_or_find_participant(project, "ext-1", None, {"a": 1})
    assert participant_body(same) == participant_body(row) and len(log()) == 1
    changed, created = create_or_find_participant(project, "ext-1", None, {"a": 2})
    assert created is False and changed.display_name == "Ada" and changed.user_data == {"a": 2}
    assert log()[-1].payload["changes"] == {"userData": {"a": 1}}
    assert Participant.get_by_id(row.id).user_data == {"a": 2}


def test_a_lost_create_race_returns_the_winners_row(project, monkeypatch):
    """The unique index decides: the insert fails, the savepoint rolls back, the existing row is used."""
    winner, _ = create_or_find_participant(project, "racer", "Winner")
    real = participants._in_project
    calls = []

    def blind_first_lookup(p):  # as if the winner had committed just after our lookup
        calls.append(p)
        query = real(p)
        return query.where(Participant.id.is_null()) if len(calls) == 1 else query

    monkeypatch.setattr(participants, "_in_project", blind_first_lookup)
    row, created = create_or_find_participant(project, "racer", "Loser")
    assert created is False and row.id == winner.id
    assert len(calls) == 2
    # the transaction survived the failed insert: the differing name was applied and its event written
    assert Participant.get_by_id(winner.id).display_name == "Loser"
    assert [e.type for e in log()] == ["participant.created", "participant.updated"]
    assert Participant.select().count() == 1


def test_concurrent_creates_of_one_external_user_id_yield_one_participant(project):
    workers = 6
    barrier = threading.Barrier(workers)
    results, errors = [], []

    def work():
        try:
            barrier.wait(timeout=10)
            row, created = create_or_find_participant(project, "same-user", "Same", {"k": 1})
            results.append((row.id, created))
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len({row_id for row_id, _ in results}) == 1 and len(results) == workers
    assert sum(created for _, created in results) == 1
    assert Participant.select().count() == 1
    assert [e.type for e in log()] == ["participant.created"]


def test_update_and_no_op_update(project):
    row, _ = create_or_find_participant(project, "ext-1", "Ada")
    updated = update_participant(project, row.id, "Bea")
    assert updated.display_name == "Bea" and updated.updated_at >= row.updated_at
    assert log()[-1].payload == {"action": "updated", "data": participant_body(updated), "changes": {"displayName": "Ada"}}
    update_participant(project, row.id, KEEP, KEEP)
    update_participant(project, row.id, "Bea", {})
    assert [e.type for e in log()] == ["participant.created", "participant.updated"]


def test_unknown_or_other_projects_participant_is_not_found(project, stranger):
    theirs, _ = create_or_find_participant(stranger.project, "ext-1")
    for call in (
        lambda: get_participant(project, theirs.id),
        lambda: update_participant(project, theirs.id, "x"),
        lambda: delete_participant(project, theirs.id),
        lambda: get_participant(project, "missing"),
    ):
        with pytest.raises(DomainError) as caught:
            call()
        assert caught.value.kind == "not_found"
    assert Participant.get_by_id(theirs.id).display_name == "ext-1"


def test_delete_emits_the_last_state(project):
    row, _ = create_or_find_participant(project, "ext-1", "Ada", {"x": [1]})
    last = delete_participant(project, row.id)
    assert last == participant_body(row)
    assert Participant.select().count() == 0
    created, deleted = log()
    assert deleted.type == "participant.deleted" and deleted.seq > created.seq
    assert deleted.resource_id == f"participant:{row.id}"
    assert deleted.payload == {"action": "deleted", "data": last}


def test_a_failing_event_write_rolls_the_change_back(project, monkeypatch):
    row, _ = create_or_find_participant(project, "ext-1", "Ada")

    def broken(*args, **kwargs):
        raise RuntimeError("event log unavailable")

    monkeypatch.setattr(events, "_insert", broken)  # the INSERT of the event row fails
    with pytest.raises(RuntimeError):
        create_or_find_participant(project, "ext-2")
    with pytest.raises(RuntimeError):
        update_participant(project, row.id, "Bea")
    with pytest.raises(RuntimeError):
        delete_participant(project, row.id)
    assert [(p.external_user_id, p.display_name) for p in Participant.select()] == [("ext-1", "Ada")]
    assert len(log()) == 1


@pytest.mark.parametrize(
    "limit,offset,expected",
    [
        (None, None, (DEFAULT_LIMIT, 0)),
        (10.0, 5.0, (10, 5)),
        (2.9, 1.7, (2, 1)),
        (0.0, -0.5, (1, 0)),
        (-3.0, -3.0, (1, 0)),
        (1e9, 1e300, (MAX_LIMIT, MAX_OFFSET)),
        (math.inf, -math.inf, (MAX_LIMIT, 0)),
        (math.nan, math.nan, (DEFAULT_LIMIT, 0)),
        (7, 3, (7, 3)),
    ],
)
def test_page_bounds(limit, offset, expected):
    assert page_bounds(limit, offset) == expected


def test_search_pattern_escapes_like_wildcards():
    assert search_pattern("ab") == "%ab%"
    assert search_pattern("50%_off\\") == "%50\\%\\_off\\\\%"


def test_list_pages_and_totals(project):
    rows = [create_or_find_participant(project, f"user-{i}", f"Name {i}")[0] for i in range(5)]
    rows.sort(key=lambda r: (r.joined_at, r.id))  # creations may share a millisecond: then by id
    page = list_participants(project, 2, 1)
    assert page.participants == [participant_body(r) for r in rows[1:3]] and page.total == 5
    page = list_participants(project, search="NAME 4")
    assert page.participants == [participant_body(r) for r in rows if r.display_name == "Name 4"] and page.total == 1
    assert list_participants(project, search="a_e").total == 0  # "_" is literal
