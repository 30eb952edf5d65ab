"""Argon2 work is bounded: under gevent at most one hash per usable core runs at once, the rest of a login flood
waits as greenlets (cortex.lib.crypto). What that keeps for the rest of the server is measured by
tools/bench_logins.py, not here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from cortex import ROOT

SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: int(sys.argv[1])]))
    from gevent import monkey
    monkey.patch_all()
    import json
    import gevent
    from gevent.monkey import get_original
    from cortex.lib import crypto

    lock = get_original("threading", "Lock")()
    running = [0, 0]  # now, most at once
    real = crypto._hasher.hash

    class Counting:  # argon2's PasswordHasher has read-only attributes: wrap it
        def hash(self, password):
            return counting(password)

    def counting(password):
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        try:
            return real(password)
        finally:
            with lock:
                running[0] -= 1

    crypto._hasher = Counting()
    hashes = gevent.joinall([gevent.spawn(crypto.hash_password, f"password-{i}") for i in range(6)], raise_error=True)
    print(json.dumps({"slots": crypto.argon2_concurrency(), "most_at_once": running[1],
                      "hashed": sum(h.value.startswith("$argon2id$") for h in hashes)}))
    """
)


def run(cores: int) -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(cores)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_one_hash_per_core_at_a_time():
    one = run(1)
    assert one == {"slots": 1, "most_at_once": 1, "hashed": 6}
    if len(os.sched_getaffinity(0)) >= 2:
        two = run(2)
        assert two["slots"] == 2 and two["most_at_once"] == 2 and two["hashed"] == 6
