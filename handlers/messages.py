"""Messages tag: a session's transcript and the debug audio of its messages.

Messages are written by signed ingest (``cortex/events/ingest.py``); debug-audio files live under
``<data dir>/debug-audio/`` for 24 hours (``cortex/integrations/debug_audio.py``).
"""

import flask

from cortex.http.app import debug_audio_store
from models import messages


def get_messages(project, id_, limit=None, offset=None):
    """GET …/sessions/{id}/messages: the transcript in timestamp order (at most 10000 lines per page); 404 for
    another project's session."""
    return messages.session_message_bodies(project, id_, debug_audio_store().exists, limit, offset)


def download_debug_audio(project, id_, message_id):
    """GET …/sessions/{id}/messages/{messageId}/debug-audio: the WAV; 404 when none, expired or deleted."""
    handle = debug_audio_store().open_kept(messages.kept_debug_audio(project, id_, message_id), message_id)
    return flask.send_file(
        handle, mimetype="audio/wav", as_attachment=True, download_name=f"{message_id}.wav", max_age=0
    )
