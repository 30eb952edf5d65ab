"""Webhooks tag: subscriptions (secrets write-only, encrypted at rest), the delivery log, manual retry.

Delivery itself is the engine's (``cortex/engines/webhooks.py``): these handlers only read and change rows.
"""

from cortex.http.app import current_settings, document_event_types
from models import webhooks


def create_subscription(project, body):
    """POST …/webhooks/subscriptions: a new active subscription; it receives events logged from now on."""
    sub = webhooks.create_subscription(project, body, document_event_types(),
                                       current_settings().max_webhooks_per_project)
    return webhooks.subscription_body(sub), 201


def list_subscriptions(project):
    """GET …/webhooks/subscriptions: the project's subscriptions, oldest first (never a secret)."""
    return [webhooks.subscription_body(sub) for sub in webhooks.live_subscriptions(project.id)]


def get_subscription(project, id_):
    """GET …/webhooks/subscriptions/{id}."""
    return webhooks.subscription_body(webhooks.get_subscription(project.id, id_))


def update_subscription(project, id_, body):
    """PUT …/webhooks/subscriptions/{id}: change the given fields (the rest stay)."""
    sub = webhooks.update_subscription(project.id, id_, body, document_event_types())
    return webhooks.subscription_body(sub)


def delete_subscription(project, id_):
    """DELETE …/webhooks/subscriptions/{id}: nothing more is sent; pending events become failed."""
    webhooks.delete_subscription(project.id, id_)
    return {"message": "Subscription deleted"}


def list_events(project, status=None, limit=None, offset=None):
    """GET …/webhooks/events: the project's webhook events, newest first (``limit``/``offset`` read leniently)."""
    return [webhooks.webhook_event_body(row) for row in webhooks.list_events(project.id, status, limit, offset)]


def get_event(project, id_):
    """GET …/webhooks/events/{id}: the event with every delivery attempt, oldest first."""
    return webhooks.webhook_event_detail_body(webhooks.get_event(project.id, id_))


def retry_event(project, id_):
    """POST …/webhooks/events/{id}/retry: deliver a delivered or failed event again now (409 while pending)."""
    return webhooks.webhook_event_detail_body(webhooks.retry_event(project.id, id_))
