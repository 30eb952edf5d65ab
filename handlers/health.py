"""Health tag."""

from cortex import __version__
from models.base import rfc3339, utcnow


def get_data():
    """GET /api: liveness of the service."""
    return {"status": "ok", "service": "cortex", "version": __version__, "time": rfc3339(utcnow())}
