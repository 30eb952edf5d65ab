"""Versioned schema migrations: append only; never edit an applied one (``models.database.upgrade`` runs them)."""

from playhouse.migrate import SchemaMigrator, migrate

from models import (
    events,
    function_code,
    functions,
    gatherings,
    identity,
    ingest,
    mail,
    messages,
    participants,
    plugins,
    presence,
    sanctions,
    sessions,
    settings,
    voice,
    webhooks,
)
from models.base import UTCDateTimeField


def _v1_identity(database):
    """Tenants, users, Fusion sessions, projects, members, API keys."""
    database.create_tables(identity.MODELS, safe=True)


def add_column_if_missing(database, table: str, column: str, field) -> None:
    """Add a column unless the table already has it.

    Migrations create their new tables from the current models (``create_tables(safe=True)``), so a fresh
    database already has columns that later migrations add to older tables: every added column is guarded.
    """
    if column not in {c.name for c in database.get_columns(table)}:
        migrate(SchemaMigrator.from_database(database).add_column(table, column, field))


def _v2_projects_settings_voice(database):
    """Project update time, app settings, secret cache, voice activation and ODIN access keys."""
    add_column_if_missing(database, "project", "updated_at", UTCDateTimeField(null=True))
    # A project may have no registry secret (sync-secret then answers 400); v1 databases required one.
    secret = next(c for c in database.get_columns("project") if c.name == "secret_encrypted")
    if not secret.null:
        migrate(SchemaMigrator.from_database(database).drop_not_null("project", "secret_encrypted"))
    database.create_tables(settings.MODELS + voice.MODELS, safe=True)


def _v3_events_sessions_participants(database):
    """The domain-event log and consumer cursors, sessions, participants."""
    database.create_tables(events.MODELS + sessions.MODELS + participants.MODELS, safe=True)


def _v4_messages_presence(database):
    """Session transcripts (messages, debug audio) and presence spans."""
    database.create_tables(messages.MODELS + presence.MODELS, safe=True)


def _v5_idle_clock_presence_index(database):
    """Session status-change time (the idle auto-stop's clock), an index on a project's open/recent spans."""
    add_column_if_missing(database, "session", "status_changed_at", UTCDateTimeField(null=True))
    database.execute_sql('UPDATE "session" SET "status_changed_at" = "updated_at" WHERE "status_changed_at" IS NULL')
    database.execute_sql(
        'CREATE INDEX IF NOT EXISTS "presence_span_project_id_left_at" ON "presence_span" ("project_id", "left_at")'
    )


def _v6_webhooks(database):
    """Webhook subscriptions, the delivery queue (webhook events) and the delivery-attempt log."""
    database.create_tables(webhooks.MODELS, safe=True)


def _v7_mail_outbox(database):
    """The durable mail outbox (queued messages, their attempts and state)."""
    database.create_tables(mail.MODELS, safe=True)


def _v8_ingest_replay_guard(database):
    """Signed-ingest replay records; the time an event reports, kept beside the log's own clock (receive time)."""
    database.create_tables(ingest.MODELS, safe=True)
    add_column_if_missing(database, "domain_event", "occurred_at", UTCDateTimeField(null=True))


def _v9_sanctions(database):
    """Sanctions (moderation records) with the indexes of a player's sanctions and of the clock's transitions."""
    database.create_tables(sanctions.MODELS, safe=True)


def _v10_gatherings(database):
    """Gatherings (with the unique live join code per project) and their members."""
    database.create_tables(gatherings.MODELS, safe=True)


def _v11_gathering_code_index(database):
    """Any gathering by its join code (a join with the code of a finished gathering answers 409, not 404)."""
    database.execute_sql(
        'CREATE INDEX IF NOT EXISTS "gathering_project_id_join_code" ON "gathering" ("project_id", "join_code")'
    )


def _v13_functions(database):
    """A project's functions settings and runtime (activation, wanted and observed state, the supervisor lease)."""
    database.create_tables(functions.MODELS, safe=True)


def _v14_function_code(database):
    """Functions: drafts, versions, deployments, logs and the event-handler queue."""
    database.create_tables(function_code.MODELS, safe=True)


def _v12_plugins(database):
    """Plugin instances, message and session annotations, and the plugin engine's work queue."""
    database.create_tables(plugins.MODELS, safe=True)


#: Every table the migrations create, as models (tests empty them between cases in dependency order).
ALL_MODELS = [
    *identity.MODELS, *settings.MODELS, *voice.MODELS, *events.MODELS, *sessions.MODELS, *participants.MODELS,
    *messages.MODELS, *presence.MODELS, *webhooks.MODELS, *mail.MODELS,
    *ingest.MODELS, *sanctions.MODELS, *gatherings.MODELS, *plugins.MODELS,
    *functions.MODELS, *function_code.MODELS,
]

#: Versioned migrations: (version, name, function(database)). Append only; never edit an applied one.
MIGRATIONS = [
    (1, "identity and projects", _v1_identity),
    (2, "project settings and voice", _v2_projects_settings_voice),
    (3, "event log, sessions and participants", _v3_events_sessions_participants),
    (4, "messages and presence", _v4_messages_presence),
    (5, "session idle clock and presence index", _v5_idle_clock_presence_index),
    (6, "webhooks", _v6_webhooks),
    (7, "mail outbox", _v7_mail_outbox),
    (8, "ingest replay guard", _v8_ingest_replay_guard),
    (9, "sanctions", _v9_sanctions),
    (10, "gatherings", _v10_gatherings),
    (11, "gathering join-code index", _v11_gathering_code_index),
    (12, "plugins", _v12_plugins),
    (13, "functions runtime", _v13_functions),
    (14, "function code, versions, deployments, logs", _v14_function_code),
]
