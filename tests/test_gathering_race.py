"""Capacity under a rush of joins from two serving processes (`cortex serve` subprocesses) sharing one database:
the conditional UPDATE on the gathering row holds the limit across processes, not only across threads."""

from __future__ import annotations

import json
import threading

from models.gatherings import Gathering, GatheringMember
from models.participants import create_or_find_participant


def test_joins_through_two_processes_never_pass_the_limit(servers, owner):
    a, b = servers(2, None)
    status, body = a.request("POST", f"/api/projects/{owner.project.id}/gatherings",
                             {"name": "Rush", "type": "lobby", "maxMembers": 10}, owner.headers)
    assert status == 201, body
    gathering = json.loads(body)
    people = [create_or_find_participant(owner.project, f"rush-{n}")[0].id for n in range(40)]
    statuses: list[int] = []
    start = threading.Barrier(len(people))

    def one(index: int, participant_id: str) -> None:
        server = (a, b)[index % 2]
        start.wait()
        code, _answer = server.request("POST", f"/api/projects/{owner.project.id}/gatherings/join",
                                       {"joinCode": gathering["joinCode"], "participantId": participant_id},
                                       owner.headers)
        statuses.append(code)

    threads = [threading.Thread(target=one, args=pair) for pair in enumerate(people)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses.count(200) == 10 and statuses.count(409) == 30, statuses
    assert Gathering.get_by_id(gathering["id"]).member_count == 10
    assert GatheringMember.select().where(GatheringMember.gathering_id == gathering["id"]).count() == 10
