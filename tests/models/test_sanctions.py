"""Sanction state from the clock, at the boundaries, and the transitions the clock makes (announced once)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from models.base import utcnow
from models.events import DomainEvent
from models.sanctions import (
    EXPIRED,
    IN_FORCE,
    SCHEDULED,
    Sanction,
    announce_transitions,
    clock_state,
    create_sanction,
    in_force,
    is_in_force,
    revoke_sanction,
    status,
)


def row(start, end=None, revoked=None) -> Sanction:
    return Sanction(start_at=start, end_at=end, revoked_at=revoked, type="mute")


def test_state_at_the_boundaries():
    now = utcnow()
    second = timedelta(seconds=1)
    assert (status(row(now), now), is_in_force(row(now), now)) == ("active", True)  # startAt = now: in force
    assert (status(row(now + second), now), is_in_force(row(now + second), now)) == ("active", False)  # scheduled
    assert (status(row(now - second, now), now), is_in_force(row(now - second, now), now)) == ("expired", False)
    assert status(row(now - second, now + second), now) == "active"  # endAt just ahead
    assert status(row(now - 2 * second, now - second, revoked=now), now) == "revoked"  # revoked then expired
    assert status(row(now - second, None, revoked=now), now) == "revoked"
    assert clock_state(row(now + second), now) == SCHEDULED and clock_state(row(now), now) == IN_FORCE
    assert clock_state(row(now - second, now), now) == EXPIRED


def test_in_force_sees_only_started_unexpired_unrevoked_sanctions_of_that_player(owner):
    now = utcnow()
    project = owner.project
    make = lambda **fields: create_sanction(project, owner.user.id, {"externalUserId": "p", **fields})  # noqa: E731
    ban = make(type="temp_ban", endAt=(now + timedelta(hours=1)).isoformat())
    perm = make(type="perm_ban")
    make(type="temp_ban", startAt=(now + timedelta(hours=1)).isoformat())  # scheduled
    make(type="temp_ban", startAt=(now - timedelta(hours=2)).isoformat(),
         endAt=(now - timedelta(hours=1)).isoformat())  # expired
    revoke_sanction(project, make(type="perm_ban")["id"], owner.user.id)
    create_sanction(project, owner.user.id, {"externalUserId": "other", "type": "perm_ban"})
    found = in_force(project.id, "p", ["temp_ban", "perm_ban"])
    assert [r.id for r in found] == [perm["id"], ban["id"]]  # the permanent one first
    assert in_force(project.id, "p", ["mute"]) == []


def test_the_clock_transitions_are_announced_once(owner):
    now = utcnow()
    project = owner.project
    expiring = create_sanction(project, owner.user.id, {"externalUserId": "p", "type": "mute",
                                                        "endAt": (now + timedelta(seconds=30)).isoformat()})
    scheduled = create_sanction(project, owner.user.id, {"externalUserId": "p", "type": "mute",
                                                         "startAt": (now + timedelta(seconds=10)).isoformat()})
    assert announce_transitions(now) == []
    later = now + timedelta(seconds=20)
    [(started, changes)] = announce_transitions(later)
    assert started.id == scheduled["id"] and changes == {"isActive": False}
    assert announce_transitions(later) == []
    much_later = now + timedelta(seconds=60)
    [(expired, changes)] = announce_transitions(much_later)
    assert expired.id == expiring["id"] and changes == {"status": "active", "isActive": True}
    assert announce_transitions(much_later) == []
    updates = list(DomainEvent.select().where(DomainEvent.type == "sanction.updated").order_by(DomainEvent.seq))
    assert [e.resource_id for e in updates] == [f"sanction:{scheduled['id']}", f"sanction:{expiring['id']}"]
    assert updates[1].payload["data"]["status"] == "expired" and updates[1].payload["changes"]["status"] == "active"


def test_a_revoked_sanction_is_never_announced_as_expired(owner):
    now = utcnow()
    made = create_sanction(owner.project, owner.user.id, {"externalUserId": "p", "type": "mute",
                                                          "endAt": (now + timedelta(seconds=5)).isoformat()})
    revoke_sanction(owner.project, made["id"], owner.user.id)
    assert announce_transitions(now + timedelta(minutes=5)) == []


@pytest.mark.parametrize("text", ["2030-01-15", "2030-01-15T10:00:00", "15.01.2030 10:00", "", "2030-13-01T00:00Z"])
def test_dates_need_an_iso_8601_date_time_with_an_offset(owner, text):
    from models.base import DomainError

    with pytest.raises(DomainError) as raised:
        create_sanction(owner.project, owner.user.id, {"externalUserId": "p", "type": "mute", "startAt": text})
    assert raised.value.kind == "invalid"


def test_a_players_sanctions_in_force_are_one_index_range_scan(owner):
    from models.base import db, is_sqlite, new_id, utcnow

    now = utcnow()
    Sanction.insert_many([
        {"id": new_id(), "tenant_id": owner.project.tenant_id, "project_id": owner.project.id,
         "external_user_id": f"player-{n % 100}", "type": "mute", "start_at": now, "created_at": now,
         "updated_at": now, "announced": "in_force"} for n in range(400)]).execute()
    db.execute_sql("ANALYZE" if is_sqlite() else "ANALYZE sanction")  # the planner sees a realistic table
    query = (Sanction.select().where(
        (Sanction.project_id == owner.project.id) & (Sanction.external_user_id == "player-7")
        & Sanction.revoked_at.is_null() & (Sanction.end_at.is_null() | (Sanction.end_at > now))
        & (Sanction.start_at <= now)).order_by(Sanction.created_at.desc(), Sanction.id.desc()))
    sql, params = query.sql()
    explain = "EXPLAIN QUERY PLAN " if is_sqlite() else "EXPLAIN "
    plan = " ".join(str(row) for row in db.execute_sql(explain + sql, params).fetchall())
    assert "sanction_project_id_external_user_id_revoked_at" in plan, plan
