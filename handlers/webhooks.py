"""Webhooks tag: subscriptions (secrets write-only, encrypted at rest), the delivery log, manual retry.

Delivery itself is the engine's (``cortex/webhooks.py``): these handlers only read and change rows.
"""

from functools import lru_cache

from cortex.app import current_spec
from cortex.routing import event_types
from models import webhooks
from models.participants import page_bounds


@lru_cache(maxsize=4)
def _known_types(spec_id: int) -> tuple[str, ...]:
    return tuple(event_types(current_spec()))


def _document_event_types() -> list[str]:
    """Every event type the served document defines (``cortex.routing.event_types``), cached per document."""
    return list(_known_types(id(current_spec())))


def create_subscription(project, body):
    """POST …/webhooks/subscriptions: a new active subscription; it receives events logged from now on."""
    return webhooks.subscription_json(webhooks.create_subscription(project, body, _document_event_types())), 201


def list_subscriptions(project):
    """GET …/webhooks/subscriptions: the project's subscriptions, oldest first (never a secret)."""
    return [webhooks.subscription_json(sub) for sub in webhooks.live_subscriptions(project.id)]


def get_subscription(project, id_):
    """GET …/webhooks/subscriptions/{id}."""
    return webhooks.subscription_json(webhooks.get_subscription(project.id, id_))


def update_subscription(project, id_, body):
    """PUT …/webhooks/subscriptions/{id}: change the given fields (the rest stay)."""
    return webhooks.subscription_json(webhooks.update_subscription(project.id, id_, body, _document_event_types()))


def delete_subscription(project, id_):
    """DELETE …/webhooks/subscriptions/{id}: nothing more is sent; pending events become failed."""
    webhooks.delete_subscription(project.id, id_)
    return {"message": "Subscription deleted"}


def list_events(project, status=None, limit=None, offset=None):
    """GET …/webhooks/events: the project's webhook events, newest first. ``limit``/``offset`` are read
    leniently like every list of the API: truncated, ``limit`` clamped into [1, 500] (default 50)."""
    limit, offset = page_bounds(limit, offset)
    return [webhooks.event_json(row) for row in webhooks.list_events(project.id, status, limit, offset)]


def get_event(project, id_):
    """GET …/webhooks/events/{id}: the event with every delivery attempt, oldest first."""
    row = webhooks.get_event(project.id, id_)
    return {**webhooks.event_json(row), "deliveries": [webhooks.delivery_json(d) for d in webhooks.deliveries(row.id)]}


def retry_event(project, id_):
    """POST …/webhooks/events/{id}/retry: deliver a delivered or failed event again now (409 while pending)."""
    row = webhooks.retry_event(project.id, id_)
    return {**webhooks.event_json(row), "deliveries": [webhooks.delivery_json(d) for d in webhooks.deliveries(row.id)]}
