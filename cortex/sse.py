"""Server-Sent Event streams of the domain-event log (being written: see issue 4)."""


def open_stream(principal, project, types, resources, last_event_id):
    raise NotImplementedError
