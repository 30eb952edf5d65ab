"""The engine registry: one list that `cortex serve` and `cortex worker` start from."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cortex.engines import REGISTRY, RUNTIME, SERVE, WORKER, EngineSpec, start_engines
from cortex.events.fanout import LiveFanout


def names(role, settings) -> list[str]:
    return [spec.name for spec in REGISTRY if spec.runs_in(role, settings)]


def test_each_engine_is_registered_once_with_the_processes_it_runs_in(settings):
    assert len({spec.name for spec in REGISTRY}) == len(REGISTRY)
    assert names(SERVE, settings) == ["live", "event-retention", "idle-sessions", "debug-audio-cleanup", "webhooks",
                                      "mail", "sanctions", "gathering-expiry", "plugins", "functions-runtime",
                                      "function-events"]
    assert names(WORKER, settings) == ["webhooks", "mail", "sanctions", "plugins", "function-events"]
    dedicated = replace(settings, webhook_worker=False)  # CORTEX_WEBHOOK_WORKER=false: workers deliver
    assert "webhooks" not in names(SERVE, dedicated) and names(WORKER, dedicated) == ["webhooks", "mail", "sanctions",
                                                                                         "plugins", "function-events"]
    assert "sanctions" not in names(SERVE, dedicated) and "plugins" not in names(SERVE, dedicated)  # event-log consumers run where the webhook fan-out runs
    assert names(RUNTIME, settings) == ["functions-runtime"]  # `cortex runtime`: the supervisor alone
    opted_out = replace(settings, functions_runtime=False)  # CORTEX_FUNCTIONS_RUNTIME=false
    assert "functions-runtime" not in names(SERVE, opted_out) and names(RUNTIME, opted_out) == []
    assert "mail" in names(SERVE, dedicated)  # mail goes out from every process (the claim leases each message)


def test_serve_engines_start_in_order_share_the_fanout_and_stop_in_reverse(app, settings):
    engines = start_engines(SERVE, settings)
    try:
        assert [name for name, _engine in engines.started] == names(SERVE, settings)
        assert isinstance(engines.fanout, LiveFanout)
        webhooks = engines.get("webhooks")
        assert webhooks.events_committed in engines.fanout._wakers  # a write of this process wakes its fan-out
        assert webhooks.dispatcher._worker.alive and engines.get("idle-sessions").alive
        assert engines.get("mail").events_committed in engines.fanout._wakers and engines.get("mail").alive
        sanctions = engines.get("sanctions")
        assert sanctions.events_committed in engines.fanout._wakers
        assert sanctions.dispatcher._worker.alive and sanctions.clock.alive
        plugins = engines.get("plugins")
        assert plugins.events_committed in engines.fanout._wakers
        assert plugins.dispatcher._worker.alive and plugins.runner.alive
    finally:
        engines.stop()
    assert engines.started == [] and not webhooks.dispatcher._worker.alive
    assert not sanctions.dispatcher._worker.alive and not sanctions.clock.alive
    assert not plugins.dispatcher._worker.alive and not plugins.runner.alive


def test_a_failing_engine_stops_the_ones_already_started(settings):
    stopped = []

    class Started:
        def start(self):
            pass

        def stop(self):
            stopped.append("first")

    class Broken:
        def start(self):
            raise RuntimeError("cannot start")

    registry = (EngineSpec("first", lambda _s: Started(), lambda _r, _s: True),
                EngineSpec("broken", lambda _s: Broken(), lambda _r, _s: True))
    with pytest.raises(RuntimeError, match="cannot start"):
        start_engines(SERVE, settings, registry)
    assert stopped == ["first"]
