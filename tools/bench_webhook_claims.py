#!/usr/bin/env python3
"""How much one webhook claim costs while a slow endpoint's backlog of due rows grows.

A subscription whose endpoint is slower than its events keeps a backlog of due rows it cannot take (its slots
are full). Claims for the other subscriptions must not pay for that backlog: ``models.webhooks.claim`` finds
rows per subscription (a loose index scan over the subscriptions with pending rows, then each one's oldest due
rows), never by walking one global queue. This prints the cost of ``claim(20)`` (plus releasing what it took)
with 9 healthy subscriptions of 100 due rows each and a full subscription holding 0 / 5,000 / 50,000 older due
rows, on a fresh SQLite file or ``--database-url postgresql://…`` (a database this tool may fill and empty).

    python tools/bench_webhook_claims.py [--database-url URL] [--backlogs 0,5000,50000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cortex.http.app import create_app  # noqa: E402
from cortex.settings import Settings  # noqa: E402
from models.base import db, new_id, transaction, utcnow  # noqa: E402
from models.database import upgrade  # noqa: E402
from models.identity import create_project, create_user  # noqa: E402
from models.webhooks import WebhookEvent, claim, create_subscription, release  # noqa: E402


def queue_rows(project, subscription, count: int, at, first_seq: int) -> list[dict]:
    return [{"id": new_id(), "subscription_id": subscription.id, "event_seq": first_seq + n, "event_id": new_id(),
             "tenant_id": project.tenant_id, "project_id": project.id, "event_type": "session.created", "body": "{}",
             "status": "pending", "attempts_count": 0, "next_attempt_at": at, "created_at": at, "updated_at": at}
            for n in range(count)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="default: a fresh SQLite file")
    parser.add_argument("--backlogs", default="0,5000,50000", help="due rows of the full subscription")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="cortex-bench-claims-")
    url = args.database_url or f"sqlite:///{workdir}/claims.db"
    create_app(Settings.from_env(data_dir=workdir, database_url=url, secret_key="bench-" + "k" * 40))
    upgrade()
    user = create_user(f"{new_id()}@bench.local", "bench-password-1", None, None)
    project, _secret = create_project(user, "Claims bench")
    subs = [create_subscription(project, {"url": "https://hooks.example.com/h", "secret": "s", "events": ["*"]},
                                ["session.created"], limit=100) for _ in range(10)]
    slow = subs[0]
    print(f"database {url.split('@')[-1]}; claim(20) with 9 subscriptions of 100 due rows, one full subscription")
    for backlog in [int(v) for v in args.backlogs.split(",")]:
        with transaction():
            WebhookEvent.delete().execute()
            rows = queue_rows(project, slow, backlog, utcnow() - timedelta(minutes=5), 0)
            for n, sub in enumerate(subs[1:]):
                rows += queue_rows(project, sub, 100, utcnow(), 10_000_000 * (n + 1))
            for start in range(0, len(rows), 500):
                WebhookEvent.insert_many(rows[start:start + 500]).execute()
        if "postgres" in url:
            db.execute_sql("ANALYZE")
        started = time.perf_counter()
        for _ in range(args.rounds):
            got = claim(20, lease=30, per_subscription=10, busy={slow.id: 10})
            release([c.id for c in got])
        per_claim = (time.perf_counter() - started) / args.rounds * 1000
        assert len(got) == 20 and all(c.subscription_id != slow.id for c in got)
        print(f"  full subscription's due backlog {backlog:>7,}: {per_claim:6.2f} ms per claim + release "
              f"({len(got)} rows, none of the full subscription)")
    with transaction():
        WebhookEvent.delete().execute()
    return 0


if __name__ == "__main__":
    sys.exit(main())
