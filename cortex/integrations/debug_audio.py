"""Debug audio: the WAV files behind ``hasDebugAudio``, where they live and how long.

When a project has debug audio enabled (``debugAudioEnabled`` in its app settings), the ``debugAudio`` of an
ingested ``message.created`` (a base64 WAV) is written to::

    <CORTEX_DATA_DIR>/debug-audio/<project id>/<message id>.wav      (directories 0700, files 0600)

and kept for 24 hours after ingest (``models.messages.DEBUG_AUDIO_RETENTION``). The message row names the file
(``debug_audio_file``, relative to the debug-audio directory) and its expiry; after the expiry the file is no
longer served (404), and ``cortex.engines.debug_audio.DebugAudioCleanupJob`` deletes it and clears both columns.

A file is written in two steps so a transaction that rolls back never leaves a served file behind: it is
*staged* (``<message id>.wav.part``) before the message's transaction and *published* (renamed into place)
after the commit; a crash in between leaves a stale ``.part`` that the job's orphan sweep deletes. Several
server processes share the directory only when they share the data directory; a deployment with one data
directory per process needs a shared volume there for downloads to work on every process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from models.base import not_found
from models.messages import DEBUG_AUDIO_RETENTION

DIRECTORY = "debug-audio"
STAGED_SUFFIX = ".part"
#: Files older than this are deleted by the orphan sweep even when no message names them (e.g. the session was
#: deleted, or a crash left a staged file): retention plus an hour of slack.
ORPHAN_AGE = DEBUG_AUDIO_RETENTION.total_seconds() + 3600
STAGED_ORPHAN_AGE = 3600.0  # a staged file is published within a request; an hour-old one is a leftover


class DebugAudioStore:
    """The debug-audio directory of one data directory."""

    def __init__(self, data_dir: str | os.PathLike):
        self.root = Path(data_dir) / DIRECTORY

    @staticmethod
    def file_name(project_id: str, message_id: str) -> str:
        """The relative name of a message's file (what ``Message.debug_audio_file`` stores)."""
        return f"{project_id}/{message_id}.wav"

    def path(self, file: str) -> Path:
        """The absolute path of a relative file name; ValueError if it would leave the directory."""
        path = (self.root / file).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"debug-audio file name {file!r} leaves the debug-audio directory")
        return path

    def stage(self, file: str, audio: bytes) -> Path:
        """Write the audio under a temporary name next to its final place; returns that path."""
        final = self.path(file)
        final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        staged = final.with_name(final.name + STAGED_SUFFIX)
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(audio)
        except BaseException:
            self.discard(staged)
            raise
        return staged

    def publish(self, staged: Path) -> None:
        """Move a staged file into place (after the message's transaction committed)."""
        os.replace(staged, staged.with_name(staged.name[: -len(STAGED_SUFFIX)]))

    @staticmethod
    def discard(staged: Path | None) -> None:
        """Remove a staged file (the transaction failed or the message was a duplicate)."""
        if staged is not None:
            try:
                staged.unlink()
            except FileNotFoundError:
                pass

    def exists(self, file: str) -> bool:
        """Is the published file there?"""
        try:
            return self.path(file).is_file()
        except ValueError:
            return False

    def open(self, file: str):
        """The published file opened for reading, or None when it is gone (an open file survives deletion)."""
        try:
            return open(self.path(file), "rb")  # noqa: SIM115 - handed to the response, which closes it
        except (FileNotFoundError, IsADirectoryError, ValueError):
            return None

    def open_kept(self, file: str, message_id: str):
        """:meth:`open`, or 404 when the file is gone (deleted since its message was read)."""
        handle = self.open(file)
        if handle is None:
            raise not_found(f"Debug audio of message {message_id}")
        return handle

    def delete(self, file: str) -> bool:
        """Delete a published file; whether it existed."""
        try:
            self.path(file).unlink()
        except (FileNotFoundError, ValueError):
            return False
        return True

    def sweep_orphans(self, now: float | None = None) -> int:
        """Delete files older than ORPHAN_AGE and staged files older than STAGED_ORPHAN_AGE; how many."""
        now = time.time() if now is None else now
        removed = 0
        if not self.root.is_dir():
            return 0
        for directory in self.root.iterdir():
            if not directory.is_dir():
                continue
            for entry in directory.iterdir():
                try:
                    age = now - entry.stat().st_mtime
                except FileNotFoundError:
                    continue
                limit = STAGED_ORPHAN_AGE if entry.name.endswith(STAGED_SUFFIX) else ORPHAN_AGE
                if entry.is_file() and age > limit:
                    try:
                        entry.unlink()
                        removed += 1
                    except FileNotFoundError:
                        pass
        return removed
