"""Plugins tag: the catalogue (``cortex.lib.plugins``), the annotations plugins wrote (``models.plugins``) and
the actions plugins offer (``cortex.engines.plugins.run_action``)."""

import flask

from cortex.engines import plugins as engine
from cortex.http.app import plugin_engine
from models import plugins


def list_plugins():
    """GET /api/plugins: every built-in plugin."""
    return plugins.plugin_bodies()


def get_plugin(slug):
    """GET /api/plugins/{slug}: one plugin (its id works too); 404 for an unknown one."""
    return plugins.plugin_of(slug).body()


def get_session_annotations(principal, session_id):
    """GET /api/plugins/annotations/sessions/{sessionId}: 404 unless the session's project is the caller's."""
    return plugins.session_annotations(principal, session_id)


def get_message_annotations_batch(principal, body):
    """POST /api/plugins/annotations/messages/batch: message id → annotations, for the messages the caller sees."""
    return plugins.message_annotations(principal, body.get("messageIds"))


def run_plugin_action(principal, slug, endpoint_path, body):
    """POST /api/plugins/{slug}/{endpointPath}: a plugin action on the session in the body (a file download)."""
    document, filename = engine.run_action(plugin_engine(), principal, slug, endpoint_path, "POST", body)
    return flask.Response(document, mimetype="text/markdown",
                          headers={"Content-Disposition": f'attachment; filename="{filename}"'})
