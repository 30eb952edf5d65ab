"""The debug-audio cleanup: expired WAV files deleted, their message columns cleared (every 10 minutes).

Where the files live and how they are written: ``cortex/integrations/debug_audio.py``.
"""

from __future__ import annotations

import logging
import os

from cortex.integrations.debug_audio import DebugAudioStore
from cortex.lib.background import PeriodicJob
from models.base import own_connection, utcnow
from models.messages import clear_debug_audio, expired_debug_audio

log = logging.getLogger("cortex.debug_audio")

CLEANUP_INTERVAL = 600.0  # seconds between two cleanup runs


class DebugAudioCleanupJob(PeriodicJob):
    """Deletes expired debug audio every ``interval`` seconds: the files, then the message columns.

    ``run_once`` can be called directly (tests, a cron); ``start``/``stop`` run it in the background like
    ``cortex.events.retention.RetentionJob`` (a greenlet under gevent, else a daemon thread).
    """

    label = "debug audio cleanup"

    def __init__(self, data_dir: str | os.PathLike, interval: float = CLEANUP_INTERVAL, batch: int = 500):
        super().__init__("cortex-debug-audio-cleanup", interval)
        self.store = DebugAudioStore(data_dir)
        self.batch = batch

    @classmethod
    def from_settings(cls, settings) -> DebugAudioCleanupJob:
        """The job for ``settings.data_dir``."""
        return cls(settings.data_dir)

    def run_once(self) -> int:
        """Delete every expired file, clear its message's columns, sweep orphans; the number of files deleted."""
        deleted = 0
        with own_connection():
            now = utcnow()
            while True:
                expired = expired_debug_audio(now, self.batch)
                for _message_id, file in expired:
                    if file is not None:
                        deleted += self.store.delete(file)
                clear_debug_audio([message_id for message_id, _file in expired])
                if len(expired) < self.batch:
                    break
        deleted += self.store.sweep_orphans()
        if deleted:
            log.info("debug audio: deleted %d expired files", deleted)
        return deleted
