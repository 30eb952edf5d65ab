"""Background loops: a greenlet when gevent has monkey-patched the process (``cortex serve``, ``cortex
worker``), else a daemon thread (tests, scripts). Every ``start()`` has a ``stop()``.

:func:`gevent_patched` is the one place that asks whether the process runs under gevent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("cortex.background")


def gevent_patched() -> bool:
    """True when gevent has monkey-patched the standard library (``cortex serve`` / ``cortex worker`` call
    ``cortex.http.serve.patch`` first): blocking calls then yield to other greenlets, background loops are
    greenlets, waits can be coalesced and a ``gevent.Timeout`` can interrupt socket I/O."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return monkey.is_module_patched("threading") and monkey.is_module_patched("socket")


def pause(stop_event: threading.Event, seconds: float, wake: threading.Event | None = None) -> None:
    """Sleep ``seconds`` (gevent-friendly once patched), waking early when the loop is stopped or ``wake`` is set."""
    deadline = time.monotonic() + seconds
    while not stop_event.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        if wake is None:
            time.sleep(min(remaining, 0.1))
        elif wake.wait(min(remaining, 0.1)):
            return


class Worker:
    """One background loop ``target(stop_event)``: a greenlet under gevent, else a daemon thread."""

    def __init__(self, name: str, target: Callable[[threading.Event], None]):
        self.name = name
        self.target = target
        self.stop_event = threading.Event()
        self._runner = None

    @property
    def alive(self) -> bool:
        """True while the loop runs."""
        if self._runner is None:
            return False
        return not self._runner.dead if hasattr(self._runner, "dead") else self._runner.is_alive()

    def start(self) -> None:
        """Start the loop (once)."""
        if self.alive:
            return
        self.stop_event = threading.Event()
        if gevent_patched():
            import gevent

            self._runner = gevent.spawn(self.target, self.stop_event)
        else:
            self._runner = threading.Thread(target=self.target, args=(self.stop_event,), name=self.name, daemon=True)
            self._runner.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to end and wait for it (a greenlet still running after ``timeout`` is killed)."""
        self.stop_event.set()
        runner, self._runner = self._runner, None
        if runner is None:
            return
        runner.join(timeout)
        if hasattr(runner, "kill") and not runner.dead:
            runner.kill(block=True, timeout=timeout)
        elif hasattr(runner, "is_alive") and runner.is_alive():
            log.warning("%s did not stop within %s s", self.name, timeout)


class Background:
    """Something that runs one :class:`Worker` (``self._worker``, set by the subclass): started, stopped, alive."""

    _worker: Worker

    def start(self) -> None:
        """Run in the background (a greenlet under gevent, else a daemon thread)."""
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop and wait."""
        self._worker.stop(timeout)

    @property
    def alive(self) -> bool:
        """True while the background loop runs."""
        return self._worker.alive


class PeriodicJob(Background):
    """A background job: ``run_once()`` at start and then every ``interval`` seconds until stopped; a failed
    run is logged and retried at the next interval. Subclasses implement ``run_once``; it can also be called
    directly (tests, a cron)."""

    label = "periodic job"

    def __init__(self, name: str, interval: float):
        self.interval = interval
        self._wake = threading.Event()
        self._worker = Worker(name, self.run_forever)

    def wake(self) -> None:
        """Run now instead of at the end of the current interval."""
        self._wake.set()

    def run_once(self) -> int:
        """One run; how many things it did."""
        raise NotImplementedError

    def run_forever(self, stop_event: threading.Event) -> None:
        """Run every ``interval`` seconds until stopped; failures are logged."""
        while not stop_event.is_set():
            self._wake.clear()  # before the run: a wake() during it makes the pause below end at once
            try:
                self.run_once()
            except Exception:
                log.exception("%s failed; retrying in %s s", self.label, self.interval)
            pause(stop_event, self.interval, self._wake)
