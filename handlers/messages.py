"""Messages tag: a session's transcript and the debug audio of its messages.

Messages are written by signed ingest (``cortex/ingest.py``); debug-audio files live under
``<data dir>/debug-audio/`` for 24 hours (``cortex/debug_audio.py``).
"""

import flask

from cortex import debug_audio
from cortex.problems import not_found
from models import messages, sessions


def get_messages(project, id_):
    """GET …/sessions/{id}/messages: the transcript in timestamp order; 404 for another project's session."""
    session = sessions.get_session(project, id_)
    return messages.list_messages(session, debug_audio.store().exists)


def download_debug_audio(project, id_, message_id):
    """GET …/sessions/{id}/messages/{messageId}/debug-audio: the WAV; 404 when none, expired or deleted."""
    session = sessions.get_session(project, id_)
    file = messages.debug_audio_file(session, message_id)
    handle = debug_audio.store().open(file) if file is not None else None
    if handle is None:
        raise not_found(f"Debug audio of message {message_id}")
    return flask.send_file(
        handle, mimetype="audio/wav", as_attachment=True, download_name=f"{message_id}.wav", max_age=0
    )
