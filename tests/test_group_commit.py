"""Group commit (models.events.GroupCommit): concurrent writes share one transaction, each caller still gets
exactly its own answer, and a failure costs nobody else their write.

The first tests drive GroupCommit with greenlets in this process (``enabled=True``: without monkey-patching
greenlets share one connection, which is all these writes need). The last one sends concurrent signed ingests
to a real ``cortex serve`` (monkey-patched, where ingest batches by itself).
"""

from __future__ import annotations

import json
import os
import threading
import time

import gevent
import pytest

from cortex.events import ingest
from models.base import rfc3339, utcnow
from models.events import DomainEvent, GroupCommit, emit
from models.messages import DuplicateMessage, Message
from models.sessions import Session
from models.settings import cached_project_secret, sync_project_secret


def log_event(project, number: int):
    """A unit of work: one event in the log; returns its seq."""

    def work():
        return emit("image.ready", tenant_id=project.tenant_id, project_id=project.id, resource_id=f"image:{number}",
                    action="occurred", data={"n": number}).seq

    return work


def run_together(group, items: list) -> list[gevent.Greenlet]:
    greenlets = [gevent.spawn(group.submit, item) for item in items]
    gevent.joinall(greenlets, timeout=30)
    assert all(greenlet.ready() for greenlet in greenlets)
    return greenlets


def test_concurrent_units_share_transactions_and_each_gets_its_result(app, owner):
    group = GroupCommit(enabled=True)
    greenlets = run_together(group, [log_event(owner.project, n) for n in range(40)])
    seqs = [greenlet.get() for greenlet in greenlets]
    logged = {event.seq: event.payload["data"]["n"] for event in DomainEvent.select()}
    assert [logged[seq] for seq in seqs] == list(range(40))  # each caller got the seq of its own event
    assert group.items == 40 and group.batches < 40  # shared transactions
    assert seqs == sorted(seqs)  # written in the order they were queued


def test_a_failing_unit_fails_alone_and_leaves_nothing(app, owner):
    group = GroupCommit(enabled=True)

    def broken():
        emit("image.ready", tenant_id=owner.project.tenant_id, project_id=owner.project.id,
             resource_id="image:broken", action="occurred", data={})
        raise ValueError("no such image")

    units = [log_event(owner.project, n) for n in range(10)]
    units.insert(5, broken)
    greenlets = run_together(group, units)
    assert isinstance(greenlets[5].exception, ValueError)
    assert all(greenlet.successful() for index, greenlet in enumerate(greenlets) if index != 5)
    assert sorted(event.payload["data"]["n"] for event in DomainEvent.select()) == list(range(10))
    assert not DomainEvent.select().where(DomainEvent.resource_id == "image:broken").exists()


def test_inside_a_transaction_run_is_part_of_it(app, owner):
    from models.base import transaction

    group = GroupCommit(enabled=True)
    with pytest.raises(RuntimeError), transaction():
        group.run(log_event(owner.project, 1))
        raise RuntimeError("roll back")
    assert DomainEvent.select().count() == 0


def test_bulk_message_writes_fall_back_to_one_by_one_on_a_duplicate(app, owner):
    """Two ingests of the same sender message id in one batch: one message, the other caller learns it was a
    duplicate; the rest of the batch is stored."""
    session = Session.create(project=owner.project.id, tenant_id=owner.project.tenant_id, external_room_id="r",
                             title="t", created_by_user_id=owner.user.id, status="active")
    from models.messages import new_message

    def item(external_id: str):
        message, event = new_message(session, sender_name="Ada", content=external_id, external_id=external_id,
                                     source="voice:server")
        return owner.project, message, event

    group = GroupCommit(ingest._write_messages, ingest._write_message, enabled=True)
    greenlets = run_together(group, [item("a"), item("b"), item("dup"), item("c"), item("dup")])
    outcomes = ["dup" if isinstance(g.exception, DuplicateMessage) else g.get() for g in greenlets]
    assert outcomes.count("dup") == 1
    stored = {m.external_id: m for m in Message.select()}
    assert sorted(stored) == ["a", "b", "c", "dup"]
    for external_id, outcome in zip(["a", "b", "dup", "c", "dup"], outcomes, strict=True):
        if outcome != "dup":  # the answer is the id of the event that recorded this very message
            assert DomainEvent.get_by_id(stored[external_id].event_seq).id == outcome == stored[external_id].event_id


# ---------------------------------------------------------------- a real server batching by itself


def signed(secret: str, body: dict) -> tuple[bytes, dict]:
    raw = json.dumps(body).encode()
    timestamp = rfc3339(utcnow())
    return raw, {"X-Timestamp": timestamp, "X-Signature": ingest.sign(secret, timestamp, raw)}


def test_a_real_server_answers_concurrent_ingests_each_with_its_own_outcome(servers, owner):
    import http.client

    sync_project_secret(owner.project)
    secret = cached_project_secret(owner.project)
    session = Session.create(project=owner.project.id, tenant_id=owner.project.tenant_id, external_room_id="r",
                             title="t", created_by_user_id=owner.user.id, status="active")
    [server] = servers(1, None)

    def body(number: int, session_id: str = session.id, message_id: str | None = None) -> dict:
        data = {"sessionId": session_id, "userId": f"user-{number % 3}", "senderName": "Ada",
                "content": f"line {number}", "id": message_id or f"m-{number}"}
        return {"type": "message.created", "source": "voice:server", "resourceId": f"session:{session_id}",
                "payload": {"action": "created", "data": data}}

    bodies = [body(n) for n in range(60)]
    bodies[10] = body(10, session_id="no-such-session")  # 400, alone
    bodies[20] = body(20, message_id="m-5")  # a re-send of message 5: the same answer, no second message
    answers: list = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def send(index: int) -> None:
        raw, headers = signed(secret, bodies[index])
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        start.wait()
        connection.request("POST", "/api/events/ingest", body=raw,
                           headers={**headers, "X-Project-Id": owner.project.id, "Content-Type": "application/json"})
        response = connection.getresponse()
        answers[index] = (response.status, json.loads(response.read()))
        connection.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert answers[10][0] == 400 and "no session" in answers[10][1]["detail"], answers[10]
    ok = {index: answer[1]["id"] for index, answer in enumerate(answers) if index != 10}
    assert all(answers[index][0] == 201 for index in ok), answers
    messages = {m.external_id: m for m in Message.select().where(Message.session == session.id)}
    assert sorted(messages) == sorted(f"m-{n}" for n in range(60) if n not in (10, 20))
    assert ok[20] == ok[5] == messages["m-5"].event_id  # the re-send learnt the original's event
    for index, event_id in ok.items():
        if index != 20:
            assert messages[f"m-{index}"].event_id == event_id
    logged = DomainEvent.select().where(DomainEvent.type == "message.created", DomainEvent.project_id == owner.project.id)
    assert sorted(e.id for e in logged) == sorted(messages[m].event_id for m in messages)  # one event per message


class Outcome:
    """Stands in for the AsyncResult a waiting caller holds."""

    def set(self, value):
        self.value = value

    def set_exception(self, exc):
        self.value = exc


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"), reason="row locks: PostgreSQL")
def test_a_batch_gives_way_to_a_session_write_instead_of_deadlocking(app, owner):
    """The one order that could deadlock: a batch holds the event-log lock; a session write holding the session
    row asks for the log lock (emit) and waits; then the batch asks for that row. PostgreSQL's deadlock check
    would fire first for the write, which waited first, and fail it. The batch gives up after its lock_timeout
    instead, runs its items one by one in the usual lock order (row first), and both writes succeed."""
    from models.base import db, transaction
    from models.sessions import _change_status

    session = Session.create(project=owner.project.id, tenant_id=owner.project.tenant_id, external_room_id="r",
                             title="t", created_by_user_id=owner.user.id, status="active")
    batch_holds_log, write_waits = threading.Event(), threading.Event()
    rows = lambda: Session.select().where(Session.id == session.id)  # noqa: E731

    def write_many(items):  # holds the log lock (taken by the batch) when it asks for the row
        batch_holds_log.set()
        assert write_waits.wait(10)
        time.sleep(0.3)  # the write is waiting for the log lock by now
        rows().for_update("FOR KEY SHARE").execute()
        return items

    def write_one(item):  # alone: the row first, then the log
        rows().for_update("FOR KEY SHARE").execute()
        emit("image.ready", tenant_id=owner.project.tenant_id, project_id=owner.project.id,
             resource_id=f"image:{item}", action="occurred", data={})
        return item

    group = GroupCommit(write_many, write_one, enabled=True)  # lock_timeout_ms=0 here: the write deadlocks
    outcomes = [Outcome(), Outcome()]
    written = {}

    def session_write():
        try:
            with db.connection_context(), transaction():
                row = rows().for_update().first()
                assert batch_holds_log.wait(10)
                write_waits.set()  # the write asks for the log lock now, the batch for the row 0.3 s later
                _change_status(row, "stopping", "cortex:api")
            written["write"] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported below
            written["write"] = repr(exc)

    def batch():
        with db.connection_context():
            group.flush([("one", outcomes[0]), ("two", outcomes[1])])

    threads = [threading.Thread(target=session_write), threading.Thread(target=batch)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert written == {"write": "ok"}
    assert [outcome.value for outcome in outcomes] == ["one", "two"]
    assert [e.type for e in DomainEvent.select().order_by(DomainEvent.seq)] == [
        "session.updated", "image.ready", "image.ready"]


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"), reason="one query: PostgreSQL")
def test_batched_message_context_reads_answer_what_single_reads_answer(app, owner, stranger):
    """ContextReads: one query for many message.created reads gives each exactly its own single-read row."""
    from models.participants import create_or_find_participant

    other = stranger
    mine = Session.create(project=owner.project.id, tenant_id=owner.project.tenant_id, external_room_id="r",
                          title="t", created_by_user_id=owner.user.id, status="active")
    theirs = Session.create(project=other.project.id, tenant_id=other.project.tenant_id, external_room_id="r",
                            title="t", created_by_user_id=other.user.id, status="active")
    create_or_find_participant(owner.project, "known")
    ingest.message_commit.direct(ingest_item(owner.project, mine, "m-1"))
    items = [
        (mine.id, owner.project.id, "known", "m-1"),  # participant and original found
        (mine.id, owner.project.id, "unknown", "m-2"),
        (mine.id, owner.project.id, None, None),
        (theirs.id, owner.project.id, "known", None),  # another project's session: none
        ("no-such-session", owner.project.id, None, None),
        (mine.id, owner.project.id, "known", "m-1"),  # the same read twice in one batch
    ]
    reads = ingest.ContextReads(enabled=True)
    greenlets = run_together(reads, items)
    assert [g.get() for g in greenlets] == [reads.direct(item) for item in items]
    assert [g.get() is None for g in greenlets] == [False, False, False, True, True, False]
    assert greenlets[0].get()[4] is not None and greenlets[0].get()[5] is not None
    assert reads.batches < len(items)


def ingest_item(project, session, external_id: str):
    from models.messages import new_message

    message, event = new_message(session, sender_name="Ada", content="hi", external_id=external_id,
                                 source="voice:server")
    return project, message, event
