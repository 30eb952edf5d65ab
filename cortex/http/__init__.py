"""The HTTP layer: the app factory, routing from the OpenAPI document, the per-operation gate (security,
validation, tenancy), problem+json (the one place domain errors become HTTP answers) and the gevent server."""
