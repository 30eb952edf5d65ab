"""Cross-process wake-ups on PostgreSQL: ``LISTEN`` for the ``NOTIFY`` every event-writing transaction sends."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cortex.lib.background import Worker, pause
from models.base import db, is_sqlite
from models.events import EVENTS_CHANNEL

log = logging.getLogger("cortex.listener")


class CommitListener:
    """Calls ``wake`` whenever any process commits events (PostgreSQL ``LISTEN`` on
    ``models.events.EVENTS_CHANNEL``, which every event-writing transaction notifies).

    A dispatcher in another process than the writers (``cortex worker``) would otherwise find new events only
    at its next poll. One dedicated connection (outside the pool) in autocommit mode; under gevent the wait is
    cooperative. A lost connection is re-opened after a pause (``wake`` is called then too: notifications
    may have been missed). A no-op on SQLite (one process writes; it wakes its consumers itself)."""

    def __init__(self, wake: Callable[[], None], reconnect_pause: float = 1.0):
        self.wake = wake
        self.reconnect_pause = reconnect_pause
        self.notifications = 0  # received so far (tests read it)
        self._worker = Worker("cortex-commit-listener", self.run_forever)

    @staticmethod
    def available() -> bool:
        """True when the bound database is PostgreSQL."""
        return not is_sqlite()

    def _connect(self):
        import psycopg2
        from psycopg2.extensions import ISOLATION_LEVEL_AUTOCOMMIT

        connection = psycopg2.connect(dbname=db.obj.database, **db.obj.connect_params)
        connection.set_isolation_level(ISOLATION_LEVEL_AUTOCOMMIT)
        with connection.cursor() as cursor:
            cursor.execute(f"LISTEN {EVENTS_CHANNEL}")
        return connection

    def run_forever(self, stop_event: threading.Event) -> None:
        """Listen until stopped, re-connecting after failures."""
        import select

        while not stop_event.is_set():
            connection = None
            try:
                connection = self._connect()
                self.wake()  # anything committed before LISTEN took effect
                while not stop_event.is_set():
                    if select.select([connection], [], [], 0.5)[0]:
                        connection.poll()
                        if connection.notifies:
                            self.notifications += len(connection.notifies)
                            connection.notifies.clear()
                            self.wake()
            except Exception:
                log.warning("commit listener: connection lost; re-connecting in %s s", self.reconnect_pause,
                            exc_info=True)
                pause(stop_event, self.reconnect_pause)
            finally:
                if connection is not None:
                    connection.close()

    def start(self) -> None:
        """Listen in the background (a no-op on SQLite)."""
        if self.available():
            self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening."""
        self._worker.stop(timeout)
