"""The plugin engine inside real `cortex serve` processes: signed ingest → annotations, and a restart that loses
nothing and writes nothing twice."""

from __future__ import annotations

import json
import time

from cortex.events import ingest
from models.base import rfc3339, transaction, utcnow
from models.events import DomainEvent
from models.messages import add_message
from models.plugins import MessageAnnotation, create_instance
from tests.handlers.test_ingest import URL, event, make_session, secret_of

LINES = ["you are a shit player", "I love this game, great match!", "see you at the base", "this is awful"]


def send(server, member, secret, session_id, number, text):
    raw = json.dumps(event("message.created", {"sessionId": session_id, "userId": f"u{number % 3}",
                                                "senderName": f"Player {number % 3}", "content": text,
                                                "id": f"line-{number}"})).encode()
    timestamp = rfc3339(utcnow())
    status, body = server.request_raw("POST", URL, raw, {"X-Project-Id": member.project.id, "X-Timestamp": timestamp,
                                                         "X-Signature": ingest.sign(secret, timestamp, raw)})
    assert status == 201, body


def wait_for(condition, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def counts():
    rows = list(MessageAnnotation.select(MessageAnnotation.type))
    return {kind: sum(1 for row in rows if row.type == kind) for kind in ("sentiment", "profanity")}


def test_ingested_lines_are_annotated_and_a_restart_resumes_without_duplicates(servers, owner):
    secret = secret_of(owner)
    create_instance(owner.project, {"pluginId": "sentiment"})
    create_instance(owner.project, {"pluginId": "profanity-filter"})
    session = make_session(owner)
    (first,) = servers(1, None)
    for number, text in enumerate(LINES):
        send(first, owner, secret, session.id, number, text)
    wait_for(lambda: counts() == {"sentiment": 4, "profanity": 1})
    first.stop()

    # Lines committed while no engine runs are picked up by the next process, from the saved cursor.
    for text in LINES:
        with transaction():
            add_message(session, sender_name="Offline", content=text, external_user_id="offline")
    (second,) = servers(1, None)
    for number, text in enumerate(LINES, start=len(LINES)):
        send(second, owner, secret, session.id, number, text)
    wait_for(lambda: counts() == {"sentiment": 12, "profanity": 3})
    time.sleep(0.5)  # nothing more arrives: no line annotated twice
    assert counts() == {"sentiment": 12, "profanity": 3}
    assert DomainEvent.select().where(DomainEvent.type == "message.annotation.created").count() == 15
    second.stop()
