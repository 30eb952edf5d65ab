"""Signed ingest of events from ODIN services (being written: see issue 4)."""


def ingest(project_ref, timestamp, signature, body, raw_body) -> str:
    raise NotImplementedError
