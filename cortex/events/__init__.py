"""The event log's consumers and producers beside the models: the ``Dispatcher`` (log → handler, at least
once), the live fan-out to SSE streams, the commit listener (PostgreSQL ``LISTEN``), event-log retention, the
SSE streams themselves and signed ingest (events from ODIN services into the log)."""
