"""Sessions tag: create (bot started by default), list, read, start/stop the bot, actions, summary.

Statuses and bot drivers: see cortex/bot.py.
"""

from contextlib import contextmanager

from cortex.bot import bot_driver
from cortex.problems import ApiProblem, conflict
from models import sessions
from models.sessions import BotCommandError, session_body


@contextmanager
def _delivered():
    """A command no bot could receive: 503 (the session was marked ``error``)."""
    try:
        yield
    except BotCommandError as exc:
        raise ApiProblem(503, f"The bot command could not be delivered ({exc}); the session is now in status error") from None


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
        driver=bot_driver() if auto_start else None,
    )
    return session_body(session), 201


def list_sessions(project):
    """GET …/sessions: every session of the project, newest first."""
    return sessions.list_session_bodies(project)


def get_session(project, id_):
    """GET …/sessions/{id}: 404 for an unknown session or another project's."""
    return session_body(sessions.get_session(project, id_))


def start_session(project, id_):
    """POST …/sessions/{id}/start: idempotent (an active or starting session gets the command again)."""
    with _delivered():
        sessions.start_session(project, id_, bot_driver())
    return {"message": "Bot start command sent"}, 201


def stop_session(project, id_):
    """POST …/sessions/{id}/stop: idempotent (a stopping or stopped session gets the command again)."""
    with _delivered():
        sessions.stop_session(project, id_, bot_driver())
    return {"message": "Bot stop command sent"}, 201


def get_session_actions(project, id_):
    """GET …/sessions/{id}/actions: plugin actions; none until plugins exist."""
    session = sessions.get_session(project, id_)
    return {"sessionId": session.id, "plugins": []}


def regenerate_summary(project, id_):
    """POST …/sessions/{id}/regenerate-summary: 409 while no summary plugin can be enabled."""
    sessions.get_session(project, id_)
    raise conflict("no summary plugin enabled for this project; install and enable the session-summary plugin")
