"""Sessions tag: create (bot started by default), list, read, start/stop the bot, actions, summary.

Statuses and bot commands: see ``models/sessions.py``; drivers: ``cortex/integrations/bots.py``.
"""

from cortex.engines import plugins as plugin_runs
from cortex.http.app import current_bot_driver, plugin_engine
from models import plugins, sessions


def create_session(principal, project, body):
    """POST …/sessions: 400 unless app settings are configured; autoStart (default true) starts the bot at once."""
    auto_start = body.get("autoStart", True)
    session = sessions.create_session(
        project,
        principal.user_id,
        body["title"],
        body["externalRoomId"],
        body.get("gateway"),
        body.get("idleTimeout"),
        auto_start=auto_start,
        driver=current_bot_driver() if auto_start else None,
    )
    return sessions.session_body(session), 201


def list_sessions(project, limit=None, offset=None):
    """GET …/sessions: the project's sessions, newest first (at most 1000 per page)."""
    return sessions.list_session_bodies(project, limit, offset)


def get_session(project, id_):
    """GET …/sessions/{id}: 404 for an unknown session or another project's."""
    return sessions.session_body(sessions.get_session(project, id_))


def start_session(project, id_):
    """POST …/sessions/{id}/start: idempotent (an active or starting session gets the command again); 503 when
    the command cannot be delivered."""
    sessions.start_session(project, id_, current_bot_driver())
    return {"message": "Bot start command sent"}, 201


def stop_session(project, id_):
    """POST …/sessions/{id}/stop: idempotent (a stopping or stopped session gets the command again); 503 when
    the command cannot be delivered."""
    sessions.stop_session(project, id_, current_bot_driver())
    return {"message": "Bot stop command sent"}, 201


def get_session_actions(project, id_):
    """GET …/sessions/{id}/actions: per enabled plugin instance with actions, its action group."""
    return plugins.session_actions(project, id_)


def regenerate_summary(project, id_):
    """POST …/sessions/{id}/regenerate-summary: run the summary now; 409 without an enabled session-summary."""
    return plugin_runs.regenerate_summary(plugin_engine(), project, id_)
