"""Plugins and Plugin Instances over HTTP, and the plugin engine on the event log: the catalogue, instances (settings
validation, one per plugin, masked and encrypted passwords, tenancy, roles, scopes), annotations written with their
events, at-least-once without duplicates, restart, failures retried without blocking, auto-sanctions, session
plugins, regenerateSummary, session actions and the minutes download."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from cortex.engines.plugins import CONSUMER, PluginEngine
from cortex.lib.plugins import CATALOGUE, find
from cortex.lib.plugins.base import PluginError
from models.base import transaction, utcnow
from models.events import DomainEvent, EventCursor
from models.messages import add_message
from models.plugins import MessageAnnotation, PluginInstance, PluginJob, SessionAnnotation
from models.sanctions import Sanction
from models.sessions import Session, set_session_status

PROFANE, CLEAN, HAPPY, SAD = "you are a shit player", "see you at the base", "I love this, great game!", "this is awful, I hate it"
MEETING = [
    ("alice", "Alice", "Welcome everyone, today we plan the spring tournament for our guild."),
    ("bob", "Bob", "I will book the server for the tournament weekend."),
    ("carol", "Carol", "The tournament needs a bracket with sixteen teams and a final on Sunday."),
    ("alice", "Alice", "Bob, can you send the rules to all team captains by Friday?"),
    ("bob", "Bob", "Sure, the rules document is almost finished."),
    ("carol", "Carol", "We need to find sponsors for the prize pool."),
    ("alice", "Alice", "The prize pool last year was five hundred euros."),
    ("carol", "Carol", "I'll design the tournament banner this week."),
    ("bob", "Bob", "Streaming the final on our channel would bring new members to the guild."),
    ("alice", "Alice", "TODO: update the guild website with the tournament date."),
]


class FakeProvider:
    """The outbound context of session plugins: records calls, answers like an OpenAI-compatible server."""

    def __init__(self, answer=None, error=None):
        self.calls, self.answer, self.error = [], answer, error

    def post_json(self, url, body, headers, timeout):
        self.calls.append((url, body, headers))
        if self.error:
            raise PluginError(self.error)
        return self.answer or {"choices": [{"message": {"content": "An LLM summary."}}]}


@pytest.fixture
def engine(app):
    return PluginEngine(FakeProvider())


def purl(member, tail=""):
    return f"/api/projects/{member.project.id}/plugins/instances{tail}"


def install(client, member, ref, settings=None, headers=None):
    body = {"pluginId": ref}
    if settings is not None:
        body["settings"] = settings
    return client.post(purl(member), json=body, headers=headers or member.headers)


def make_session(member, status="active") -> Session:
    return Session.create(project=member.project.id, tenant_id=member.project.tenant_id, external_room_id="room",
                          title="Guild meeting", created_by_user_id=member.user.id, status=status)


def say(session, user, text, name=None, at=None):
    with transaction():
        message, _event = add_message(session, sender_name=name or user.title(), content=text,
                                      external_user_id=user, timestamp=at)
    return message


def annotations(type_=None):
    query = MessageAnnotation.select()
    if type_:
        query = query.where(MessageAnnotation.type == type_)
    return list(query)


def events(kind):
    return list(DomainEvent.select().where(DomainEvent.type == kind).order_by(DomainEvent.seq))


# ---------------------------------------------------------------- catalogue


def test_catalogue_lists_the_four_built_in_plugins_with_stable_ids(client, owner):
    response = client.get("/api/plugins", headers=owner.headers)
    assert response.status_code == 200
    body = response.get_json()
    assert [p["slug"] for p in body] == ["profanity-filter", "sentiment", "session-summary", "action-items"]
    assert all(p["isActive"] is True and uuid.UUID(p["id"]) for p in body)
    assert [p["id"] for p in body] == [p.id for p in CATALOGUE]
    profanity = client.get("/api/plugins/profanity-filter", headers=owner.headers).get_json()
    keys = {f["key"]: f for f in profanity["settingsSchema"]}
    assert set(keys) == {"autoSanction", "sanctionType", "threshold", "windowMinutes", "durationMinutes",
                         "customWords", "allowWords"}
    assert keys["threshold"]["default"] == 3 and keys["threshold"]["validation"] == {"min": 1, "max": 100}
    assert keys["sanctionType"]["default"] == "mute" and "temp_ban" in keys["sanctionType"]["options"]
    assert profanity["events"] == ["message.created"] and profanity["outputAnnotationType"] == "profanity"
    by_id = client.get(f"/api/plugins/{profanity['id']}", headers=owner.headers)
    assert by_id.status_code == 200 and by_id.get_json()["slug"] == "profanity-filter"
    assert client.get("/api/plugins/nope", headers=owner.headers).status_code == 404


# ---------------------------------------------------------------- instances


def test_install_fills_defaults_and_embeds_the_plugin_on_reads(client, owner):
    response = install(client, owner, "profanity-filter", {"threshold": 5})
    assert response.status_code == 201
    body = response.get_json()
    assert body["settings"] == {"autoSanction": False, "sanctionType": "mute", "threshold": 5, "windowMinutes": 60,
                                "durationMinutes": 60, "customWords": [], "allowWords": []}
    assert body["isEnabled"] is True and body["projectId"] == owner.project.id
    assert body["pluginId"] == find("profanity-filter").id and body["tenantId"] == owner.project.tenant_id
    got = client.get(purl(owner, f"/{body['id']}"), headers=owner.headers).get_json()
    assert got["plugin"]["slug"] == "profanity-filter" and got["settings"] == body["settings"]
    listed = client.get(purl(owner), headers=owner.headers).get_json()
    assert [i["id"] for i in listed] == [body["id"]] and listed[0]["plugin"]["name"] == "Profanity Filter"


def test_install_by_id_and_a_second_install_is_409(client, owner):
    plugin_id = find("sentiment").id
    assert install(client, owner, plugin_id).status_code == 201
    second = install(client, owner, "sentiment")
    assert second.status_code == 409 and "installed" in second.get_json()["detail"]
    assert install(client, owner, "no-such-plugin").status_code == 404
    assert PluginInstance.select().count() == 1


@pytest.mark.parametrize("given, field", [
    ({"threshold": "3"}, "threshold"),
    ({"threshold": True}, "threshold"),
    ({"threshold": 0}, "threshold"),
    ({"threshold": 101}, "threshold"),
    ({"autoSanction": "yes"}, "autoSanction"),
    ({"sanctionType": "jail"}, "sanctionType"),
    ({"customWords": "darn"}, "customWords"),
    ({"customWords": [1, 2]}, "customWords"),
    ({"allowWords": ["x" * 500]}, "allowWords"),
    ({"colour": "red"}, "colour"),
])
def test_settings_the_schema_refuses_are_400_naming_the_field(client, owner, given, field):
    response = install(client, owner, "profanity-filter", given)
    assert response.status_code == 400 and response.mimetype == "application/problem+json"
    assert field in response.get_json()["detail"]
    assert PluginInstance.select().count() == 0


def test_password_settings_are_encrypted_at_rest_and_always_masked(client, owner):
    settings = {"provider": "openai-compatible", "baseUrl": "https://llm.example.com/v1", "apiKey": "sk-secret-123"}
    response = install(client, owner, "session-summary", settings)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["settings"]["apiKey"] == "********" and "sk-secret-123" not in response.get_data(as_text=True)
    row = PluginInstance.get_by_id(body["id"])
    assert "sk-secret-123" not in str(row.settings) and "sk-secret-123" not in (row.secrets_encrypted or "")
    got = client.get(purl(owner, f"/{body['id']}"), headers=owner.headers)
    assert got.get_json()["settings"]["apiKey"] == "********" and "sk-secret-123" not in got.get_data(as_text=True)
    # The mask keeps the stored value; a new value replaces it.
    kept = client.put(purl(owner, f"/{body['id']}"), json={"settings": {"apiKey": "********", "model": "m2"}},
                      headers=owner.headers)
    assert kept.status_code == 200 and kept.get_json()["settings"]["model"] == "m2"
    from models.plugins import full_settings
    assert full_settings(PluginInstance.get_by_id(body["id"]))["apiKey"] == "sk-secret-123"
    client.put(purl(owner, f"/{body['id']}"), json={"settings": {"apiKey": "sk-new"}}, headers=owner.headers)
    assert full_settings(PluginInstance.get_by_id(body["id"]))["apiKey"] == "sk-new"


def test_summary_provider_needs_its_url_and_key_and_the_outbound_policy_applies(client, owner, address_policy_on):
    missing = install(client, owner, "session-summary", {"provider": "openai-compatible"})
    assert missing.status_code == 400 and "baseUrl" in missing.get_json()["detail"]
    metadata = install(client, owner, "session-summary", {"provider": "openai-compatible", "apiKey": "k",
                                                         "baseUrl": "http://169.254.169.254/v1"})
    assert metadata.status_code == 400 and "baseUrl" in metadata.get_json()["detail"]


def test_update_merges_settings_toggles_and_validates(client, owner):
    created = install(client, owner, "profanity-filter", {"threshold": 5}).get_json()
    response = client.put(purl(owner, f"/{created['id']}"), json={"settings": {"customWords": ["noob"]},
                                                                  "isEnabled": False}, headers=owner.headers)
    assert response.status_code == 200
    body = response.get_json()
    assert body["settings"]["threshold"] == 5 and body["settings"]["customWords"] == ["noob"]
    assert body["isEnabled"] is False and body["updatedAt"] > created["updatedAt"]
    bad = client.put(purl(owner, f"/{created['id']}"), json={"settings": {"windowMinutes": -1}}, headers=owner.headers)
    assert bad.status_code == 400 and "windowMinutes" in bad.get_json()["detail"]
    assert PluginInstance.get_by_id(created["id"]).settings["customWords"] == ["noob"]


def test_delete_removes_the_instance_but_keeps_its_annotations(client, owner, engine):
    created = install(client, owner, "sentiment").get_json()
    session = make_session(owner)
    message = say(session, "p1", HAPPY)
    engine.drain()
    assert len(annotations("sentiment")) == 1
    response = client.delete(purl(owner, f"/{created['id']}"), headers=owner.headers)
    assert response.status_code == 200 and response.get_json() == {"message": "Plugin instance deleted"}
    assert client.get(purl(owner, f"/{created['id']}"), headers=owner.headers).status_code == 404
    batch = client.post("/api/plugins/annotations/messages/batch", json={"messageIds": [message.id]},
                        headers=owner.headers).get_json()
    assert [a["type"] for a in batch[message.id]] == ["sentiment"]


def test_another_projects_instances_are_404_and_roles_and_scopes_apply(client, owner, stranger, add_member,
                                                                        api_key_headers):
    created = install(client, owner, "sentiment").get_json()
    for call in (client.get, client.delete):
        assert call(f"/api/projects/{stranger.project.id}/plugins/instances/{created['id']}",
                    headers=stranger.headers).status_code == 404
    assert client.get(purl(owner, f"/{created['id']}"), headers=stranger.headers).status_code == 404
    developer = add_member("developer")
    assert client.get(purl(owner), headers=developer.headers).status_code == 200
    assert install(client, owner, "profanity-filter", headers=developer.headers).status_code == 403
    reader = api_key_headers(["plugins:read"])
    assert client.get(purl(owner), headers=reader).status_code == 200
    assert install(client, owner, "profanity-filter", headers=reader).status_code == 403
    writer = api_key_headers(["plugins:write"])
    assert install(client, owner, "profanity-filter", headers=writer).status_code == 201


# ---------------------------------------------------------------- the engine: message plugins


def test_messages_are_annotated_with_their_events_in_one_transaction(client, owner, engine):
    install(client, owner, "profanity-filter")
    install(client, owner, "sentiment")
    session = make_session(owner)
    profane, clean, happy = say(session, "p1", PROFANE), say(session, "p2", CLEAN), say(session, "p3", HAPPY)
    engine.drain()
    flagged = annotations("profanity")
    assert [a.message_id for a in flagged] == [profane.id]
    assert flagged[0].data["isProfane"] is True and "shit" in flagged[0].data["words"]
    moods = {a.message_id: a.data for a in annotations("sentiment")}
    assert set(moods) == {profane.id, clean.id, happy.id} and moods[happy.id]["label"] == "positive"
    created = events("message.annotation.created")
    assert len(created) == 4 and {e.source for e in created} == {"cortex:plugin"}
    by_annotation = {e.payload["data"]["annotationId"]: e for e in created}
    for row in annotations():
        data = by_annotation[row.id].payload["data"]
        assert data["messageId"] == row.message_id and data["content"] == row.data and data["type"] == row.type
        assert data["externalUserId"] == row.external_user_id
    newest = DomainEvent.select(DomainEvent.seq).order_by(DomainEvent.seq.desc()).scalar()
    assert EventCursor.get(EventCursor.consumer == CONSUMER).seq == newest  # its own events read and passed over


def test_events_before_an_instance_existed_are_not_processed(client, owner, engine):
    session = make_session(owner)
    before = say(session, "p1", HAPPY)
    install(client, owner, "sentiment")
    after = say(session, "p1", SAD)
    engine.drain()
    assert [a.message_id for a in annotations()] == [after.id]
    assert annotations()[0].data["label"] == "negative" and before.id


def test_disabled_instances_do_not_run(client, owner, engine):
    created = install(client, owner, "sentiment").get_json()
    client.put(purl(owner, f"/{created['id']}"), json={"isEnabled": False}, headers=owner.headers)
    say(make_session(owner), "p1", HAPPY)
    engine.drain()
    assert annotations() == []


def test_a_batch_handled_twice_writes_nothing_twice_and_a_restart_resumes(client, owner, engine):
    install(client, owner, "profanity-filter")
    install(client, owner, "sentiment")
    session = make_session(owner)
    for text in (PROFANE, HAPPY, SAD):
        say(session, "p1", text)
    engine.drain()
    written, announced = len(annotations()), len(events("message.annotation.created"))
    assert written == 4 and announced == 4
    EventCursor.update(seq=0).where(EventCursor.consumer == CONSUMER).execute()  # a crash before the cursor moved
    PluginEngine(FakeProvider()).drain()
    assert len(annotations()) == written and len(events("message.annotation.created")) == announced
    later = say(session, "p2", PROFANE)  # a new engine (a restarted process) resumes at the saved cursor
    fresh = PluginEngine(FakeProvider())
    assert fresh.drain() >= 1
    assert {a.message_id for a in annotations("profanity")} >= {later.id} and len(annotations()) == written + 2


def test_a_failing_plugin_is_retried_with_backoff_without_blocking_the_others(client, owner, engine, monkeypatch):
    install(client, owner, "profanity-filter")
    install(client, owner, "sentiment")
    sentiment = find("sentiment")
    calls = []

    def broken(text, settings):
        calls.append(text)
        raise RuntimeError("model not loaded")

    original = sentiment.on_message
    object.__setattr__(sentiment, "on_message", broken)
    try:
        message = say(make_session(owner), "p1", PROFANE)
        engine.drain()
        assert [a.type for a in annotations()] == ["profanity"]  # the other plugin ran
        job = PluginJob.get()
        assert job.kind == "message" and job.target_id == message.id and engine.failures == 1
        assert engine.run_jobs() == 1  # due now: fails again, pushed back
        job = PluginJob.get()
        assert job.attempts == 1 and job.due_at > utcnow() + timedelta(seconds=3) and "model not loaded" in job.last_error
        assert engine.run_jobs() == 0  # not due yet
    finally:
        object.__setattr__(sentiment, "on_message", original)
    assert engine.run_jobs(now=utcnow() + timedelta(seconds=6)) == 1
    assert PluginJob.select().count() == 0 and {a.type for a in annotations()} == {"profanity", "sentiment"}


def test_a_job_failing_too_often_is_given_up(client, owner, engine, monkeypatch):
    from models import plugins as store
    install(client, owner, "action-items")
    session = make_session(owner)
    say(session, "p1", "I will fix the server.")
    action_items = find("action-items")
    original = action_items.on_session_end
    object.__setattr__(action_items, "on_session_end", lambda *a: (_ for _ in ()).throw(PluginError("down")))
    try:
        set_session_status(session.id, "stopped")
        engine.drain()
        now = utcnow()
        for _attempt in range(store.MAX_ATTEMPTS):
            engine.run_jobs(now=now)
            now += timedelta(seconds=store.MAX_RETRY + 1)
        assert PluginJob.select().count() == 0 and SessionAnnotation.select().count() == 0
    finally:
        object.__setattr__(action_items, "on_session_end", original)


# ---------------------------------------------------------------- auto-sanctions


def profanity_filter(client, owner, **settings):
    return install(client, owner, "profanity-filter", {"autoSanction": True, **settings}).get_json()


def test_the_threshold_within_the_window_creates_exactly_one_sanction(client, owner, engine):
    instance = profanity_filter(client, owner, threshold=3, windowMinutes=10, durationMinutes=30,
                                sanctionType="mute")
    session = make_session(owner)
    start = utcnow() - timedelta(minutes=5)
    ids = [say(session, "toxic", PROFANE, at=start + timedelta(seconds=i)).id for i in range(2)]
    say(session, "polite", CLEAN)
    engine.drain()
    assert Sanction.select().count() == 0  # two are below the threshold
    ids.append(say(session, "toxic", PROFANE, at=start + timedelta(seconds=2)).id)
    engine.drain()
    sanction = Sanction.get()
    assert sanction.type == "mute" and sanction.external_user_id == "toxic" and sanction.created_by_user_id is None
    assert sanction.metadata == {"triggeredBy": "profanity-filter", "pluginInstanceId": instance["id"],
                                 "messageIds": ids}
    assert timedelta(minutes=29) < sanction.end_at - sanction.start_at <= timedelta(minutes=30, seconds=1)
    assert len(events("sanction.created")) == 1
    for i in range(3):  # no second one while it is in force
        say(session, "toxic", PROFANE, at=start + timedelta(seconds=10 + i))
    engine.drain()
    assert Sanction.select().count() == 1


def test_lines_spread_wider_than_the_window_do_not_trigger(client, owner, engine):
    profanity_filter(client, owner, threshold=3, windowMinutes=10)
    session = make_session(owner)
    start = utcnow() - timedelta(hours=1)
    for minutes in (0, 6, 10.5):  # the first and the third are 10.5 minutes apart
        say(session, "toxic", PROFANE, at=start + timedelta(minutes=minutes))
    engine.drain()
    assert Sanction.select().count() == 0
    say(session, "toxic", PROFANE, at=start + timedelta(minutes=12))  # 6, 10.5, 12: within 10 minutes
    engine.drain()
    assert Sanction.select().count() == 1


def test_after_the_sanction_ends_only_new_lines_count_and_zero_duration_is_permanent(client, owner, engine):
    instance = profanity_filter(client, owner, threshold=2, windowMinutes=60, durationMinutes=0, sanctionType="warn")
    session = make_session(owner)
    say(session, "toxic", PROFANE)
    say(session, "toxic", PROFANE)
    engine.drain()
    first = Sanction.get()
    assert first.end_at is None and first.type == "warn"
    Sanction.update(revoked_at=utcnow()).where(Sanction.id == first.id).execute()  # no longer in force
    say(session, "toxic", PROFANE)
    engine.drain()
    assert Sanction.select().count() == 1  # the lines of the first sanction are spent
    say(session, "toxic", PROFANE)
    engine.drain()
    assert Sanction.select().count() == 2
    assert Sanction.select().where(Sanction.id != first.id).get().metadata["pluginInstanceId"] == instance["id"]


def test_auto_sanction_off_by_default(client, owner, engine):
    install(client, owner, "profanity-filter", {"threshold": 1})
    say(make_session(owner), "toxic", PROFANE)
    engine.drain()
    assert len(annotations("profanity")) == 1 and Sanction.select().count() == 0


# ---------------------------------------------------------------- session plugins, summary, actions


def meeting(owner, status="active"):
    session = make_session(owner, status)
    start = utcnow() - timedelta(minutes=30)
    return session, [say(session, user, text, name, at=start + timedelta(minutes=i))
                     for i, (user, name, text) in enumerate(MEETING)]


def test_session_end_writes_the_summary_and_action_items(client, owner, engine):
    install(client, owner, "session-summary", {"sentences": 3})
    install(client, owner, "action-items")
    session, lines = meeting(owner)
    engine.drain()
    assert PluginJob.select().count() == 0  # nothing until the session ends
    set_session_status(session.id, "stopped")
    engine.drain()
    assert PluginJob.select().count() == 2
    assert engine.run_jobs() == 2
    response = client.get(f"/api/plugins/annotations/sessions/{session.id}", headers=owner.headers)
    assert response.status_code == 200
    body = {a["type"]: a for a in response.get_json()}
    summary = body["summary"]["data"]
    assert summary["provider"] == "extractive" and summary["messageCount"] == len(MEETING)
    assert summary["participants"] == ["Alice", "Bob", "Carol"] and summary["summary"]
    items = body["action_items"]["data"]["items"]
    whos = {(i["who"], i["speaker"]) for i in items}
    assert ("Bob", "Bob") in whos and ("Carol", "Carol") in whos and ("team", "Carol") in whos
    assert any(i["who"] == "Bob" and i["speaker"] == "Alice" for i in items)  # "Bob, can you send the rules…"
    created = events("session.annotation.created")
    assert {e.payload["data"]["type"] for e in created} == {"summary", "action_items"}
    assert all(e.source == "cortex:plugin" and e.payload["data"]["sessionId"] == session.id for e in created)
    set_session_status(session.id, "active")
    set_session_status(session.id, "stopped")  # ending again: written once per instance, session and type
    engine.drain()
    engine.run_jobs()
    assert SessionAnnotation.select().count() == 2


def test_session_annotations_tenancy(client, owner, stranger, api_key_headers):
    session = make_session(owner)
    other = f"/api/plugins/annotations/sessions/{session.id}"
    assert client.get(other, headers=stranger.headers).status_code == 404
    assert client.get("/api/plugins/annotations/sessions/missing", headers=owner.headers).status_code == 404
    assert client.get(other, headers=api_key_headers(["plugin-endpoints"])).status_code == 200
    assert client.get(other, headers=api_key_headers(["sessions:read"])).status_code == 403
    bound_elsewhere = api_key_headers(["plugin-endpoints"], project_id=stranger.project.id)
    assert client.get(other, headers=bound_elsewhere).status_code in (403, 404)


def test_message_batch_returns_only_visible_messages_and_caps_the_ids(client, owner, stranger, engine):
    install(client, owner, "sentiment")
    mine = say(make_session(owner), "p1", HAPPY)
    quiet_session = make_session(owner)
    engine.drain()
    theirs = say(make_session(stranger), "p2", HAPPY)
    quiet = say(quiet_session, "p3", "")  # a line without annotation: present, empty
    batch = client.post("/api/plugins/annotations/messages/batch",
                        json={"messageIds": [mine.id, theirs.id, "missing", quiet.id]}, headers=owner.headers)
    assert batch.status_code == 200
    body = batch.get_json()
    assert set(body) == {mine.id, quiet.id} and body[quiet.id] == []
    assert body[mine.id][0]["type"] == "sentiment" and body[mine.id][0]["messageId"] == mine.id
    too_many = client.post("/api/plugins/annotations/messages/batch", json={"messageIds": ["x"] * 501},
                           headers=owner.headers)
    assert too_many.status_code == 400 and "500" in too_many.get_json()["detail"]


def test_session_actions_and_the_minutes_download(client, owner, stranger, engine, api_key_headers):
    session, _lines = meeting(owner)
    actions = f"/api/projects/{owner.project.id}/sessions/{session.id}/actions"
    assert client.get(actions, headers=owner.headers).get_json() == {"sessionId": session.id, "plugins": []}
    instance = install(client, owner, "session-summary").get_json()
    install(client, owner, "sentiment")
    groups = client.get(actions, headers=owner.headers).get_json()["plugins"]
    assert groups == [{"pluginSlug": "session-summary", "pluginName": "Session Summary", "instanceId": instance["id"],
                       "pluginIcon": find("session-summary").icon,
                       "actions": [{"id": "generate-minutes", "label": "Generate Minutes", "endpointPath": "minutes",
                                    "method": "POST", "type": "download",
                                    "icon": "heroicons_outline:document-text"}]}]
    response = client.post("/api/plugins/session-summary/minutes", json={"sessionId": session.id},
                           headers=owner.headers)
    assert response.status_code == 200 and response.mimetype == "text/markdown"
    assert response.headers["Content-Disposition"] == f'attachment; filename="minutes-{session.id}.md"'
    text = response.get_data(as_text=True)
    assert text.startswith("# Minutes: Guild meeting")
    for section in ("## Participants", "## Summary", "## Action items", "## Transcript"):
        assert section in text
    assert "Bob" in text and MEETING[-1][2].split(":")[1].strip()[:20] in text
    assert client.post("/api/plugins/session-summary/minutes", json={"sessionId": session.id},
                       headers=stranger.headers).status_code == 404
    assert client.post("/api/plugins/session-summary/nope", json={"sessionId": session.id},
                       headers=owner.headers).status_code == 404
    assert client.post("/api/plugins/sentiment/minutes", json={"sessionId": session.id},
                       headers=owner.headers).status_code == 404
    assert client.post("/api/plugins/session-summary/minutes", json={"sessionId": session.id},
                       headers=api_key_headers(["sessions:read"])).status_code == 403
    client.put(purl(owner, f"/{instance['id']}"), json={"isEnabled": False}, headers=owner.headers)
    assert client.post("/api/plugins/session-summary/minutes", json={"sessionId": session.id},
                       headers=owner.headers).status_code == 409
    assert client.get(actions, headers=owner.headers).get_json()["plugins"] == []


def test_regenerate_summary_replaces_the_summary_now(client, owner, engine, app):
    session, _lines = meeting(owner, status="stopped")
    url = f"/api/projects/{owner.project.id}/sessions/{session.id}/regenerate-summary"
    assert client.post(url, headers=owner.headers).status_code == 409
    instance = install(client, owner, "session-summary", {"sentences": 2}).get_json()
    first = client.post(url, headers=owner.headers)
    assert first.status_code == 200
    body = first.get_json()
    assert body["sessionId"] == session.id and body["pluginInstanceId"] == instance["id"]
    assert body["annotation"]["type"] == "summary" and body["annotation"]["data"]["messageCount"] == len(MEETING)
    second = client.post(url, headers=owner.headers).get_json()
    rows = list(SessionAnnotation.select())
    assert [r.id for r in rows] == [second["annotation"]["id"]] != [body["annotation"]["id"]]
    assert len(events("session.annotation.created")) == 2


def test_regenerate_with_a_failing_provider_is_502_and_keeps_the_summary(client, owner, app, monkeypatch):
    from cortex.http import app as app_module
    session, _lines = meeting(owner, status="stopped")
    url = f"/api/projects/{owner.project.id}/sessions/{session.id}/regenerate-summary"
    instance = install(client, owner, "session-summary").get_json()
    assert client.post(url, headers=owner.headers).status_code == 200
    kept = SessionAnnotation.get()
    client.put(purl(owner, f"/{instance['id']}"), json={"settings": {
        "provider": "openai-compatible", "baseUrl": "https://llm.example.com/v1", "apiKey": "sk-x"}},
        headers=owner.headers)
    failing = PluginEngine(FakeProvider(error="the provider answered 500"))
    monkeypatch.setattr(app_module, "plugin_engine", lambda: failing)
    from handlers import sessions as session_handlers
    monkeypatch.setattr(session_handlers, "plugin_engine", lambda: failing)
    response = client.post(url, headers=owner.headers)
    assert response.status_code == 502 and "provider" in response.get_json()["detail"]
    assert "sk-x" not in response.get_data(as_text=True)
    assert [r.id for r in SessionAnnotation.select()] == [kept.id]
    url_called, request, headers = failing.context.calls[0]
    assert url_called == "https://llm.example.com/v1/chat/completions" and headers["Authorization"] == "Bearer sk-x"
