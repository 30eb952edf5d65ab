"""The ``cortex`` command: serve, worker, db upgrade, admin create-user/create-project, demo."""

from __future__ import annotations

import argparse
import json
import os
import sys

DEMO_EMAIL = "demo@cortex.local"
DEMO_PASSWORD = "cortex-demo"
DEMO_PROJECT = "Demo Project"


def _app():
    """Build the HTTP app (database bound, migrations applied): serve and demo."""
    from cortex.http.app import create_app
    from models.database import upgrade

    app = create_app()
    upgrade()
    return app


def _database(migrate: bool = True):
    """Settings, the bound database and the encryption key, migrations applied: what the commands that serve no
    HTTP need (worker, db, admin). No HTTP stack is loaded (`cortex db upgrade`: 0.97 s → 0.15 s)."""
    from cortex.lib.logs import configure_logging
    from cortex.settings import Settings, apply_to_process
    from models.database import init_database, upgrade

    settings = Settings.from_env().with_secret_key()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    configure_logging(settings.log_level, settings.log_format)  # CORTEX_LOG_LEVEL, CORTEX_LOG_FORMAT
    init_database(settings.database_url, settings.db_pool_size, settings.db_pool_timeout)
    apply_to_process(settings)
    if migrate:
        upgrade()
    return settings


def _print(obj) -> None:
    """One JSON object on stdout."""
    print(json.dumps(obj))


def serve_with_engines(app, host: str, port: int, listen_fd: int | None = None) -> None:
    """Serve with every engine of the registry that runs in ``cortex serve`` (``cortex.engines``)."""
    from cortex.engines import SERVE, start_engines
    from cortex.http.serve import serve

    engines = start_engines(SERVE, app.extensions["cortex"].settings)
    app.extensions["cortex"].fanout = engines.fanout
    try:
        serve(app, host, port, listen_fd=listen_fd, draining=engines.fanout and engines.fanout.close_subscriptions)
    finally:
        engines.stop()


def cmd_serve(args) -> int:
    """cortex serve: migrate, then serve on gevent with the background engines; ``--workers N``: N such
    processes on one port under a supervisor (``cortex.http.workers``)."""
    if args.workers < 1:
        print("cortex serve: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1 and args.listen_fd is None:
        from cortex.http import workers

        _database()  # migrations once, before any worker starts (workers are new processes: nothing inherited)
        return workers.run(args.host, args.port, args.workers, workers.child_argv(args.host, args.port))
    from cortex.http.serve import patch, stop_with_parent

    patch()
    if args.listen_fd is not None:
        stop_with_parent()
    serve_with_engines(_app(), args.host, args.port, listen_fd=args.listen_fd)
    return 0


def cmd_worker(_args) -> int:
    """cortex worker: migrate, then run the engines of the registry that run in ``cortex worker`` (the webhook
    fan-out and delivery, the mail outbox, sanctions, plugins) until SIGTERM/SIGINT."""
    return _run_engines("worker")


def cmd_runtime(_args) -> int:
    """cortex runtime: migrate, then run only the functions runtime supervisor until SIGTERM/SIGINT."""
    return _run_engines("runtime")


def _run_engines(role: str) -> int:
    """Run the registry's engines of ``role`` (``worker``, ``runtime``; no HTTP) until SIGTERM/SIGINT; the first
    line printed says they run. Nothing that imports socket or ssl before the gevent patch."""
    import signal

    from cortex.http.serve import log_greenlet_errors, patch

    patch()
    import gevent
    from gevent.event import Event

    from cortex.engines import start_engines

    settings = _database()
    log_greenlet_errors()  # a greenlet's unhandled exception goes to the log (JSON too), not bare to stderr
    stopping = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopping.set)
    engines = start_engines(role, settings)
    names = ", ".join(name for name, _engine in engines.started) or "nothing (CORTEX_FUNCTIONS_RUNTIME=false?)"
    print(f"cortex {role}: running {names} (pid {os.getpid()})", flush=True)  # the first line: ready
    try:
        stopping.wait()
    finally:
        engines.stop()
    return 0


def cmd_db_upgrade(_args) -> int:
    """cortex db upgrade: apply pending migrations."""
    from models.database import current_version, upgrade

    _database(migrate=False)
    applied = upgrade()
    _print({"applied": applied, "version": current_version()})
    return 0


def cmd_rotate_secrets(_args) -> int:
    """cortex rotate-secrets: re-encrypt every stored secret with CORTEX_SECRET_KEY (the previous keys in
    CORTEX_SECRET_KEY_PREVIOUS still read what they encrypted)."""
    from models.database import rotate_secrets

    _database()
    counts = rotate_secrets()
    _print({"reencrypted": counts, "total": sum(counts.values())})
    return 0


def cmd_create_user(args) -> int:
    """cortex admin create-user."""
    from models.base import DomainError
    from models.identity import create_user

    _database()
    try:
        user = create_user(args.email, args.password, args.name, args.tenant_id)
    except DomainError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 1
    _print({"userId": user.id, "tenantId": user.tenant_id, "email": user.email})
    return 0


def cmd_create_project(args) -> int:
    """cortex admin create-project."""
    from models.base import DomainError
    from models.identity import create_project, user_by_email

    _database()
    owner = user_by_email(args.owner)
    if owner is None:
        print(f"error: no user with email {args.owner}", file=sys.stderr)
        return 1
    try:
        project, secret = create_project(owner, args.name, args.type, args.description, args.domain)
    except DomainError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 1
    _print({"id": project.id, "appId": project.app_id, "name": project.name, "secret": secret})
    return 0


def seed_demo() -> dict:
    """Create the demo user and project unless they exist (idempotent)."""
    from models.access import member_projects
    from models.identity import create_project, create_user, user_by_email

    user = user_by_email(DEMO_EMAIL) or create_user(DEMO_EMAIL, DEMO_PASSWORD, "Demo User")
    project = next((p for p, _role in member_projects(user.id, tenant_id=user.tenant_id) if p.name == DEMO_PROJECT),
                   None)
    if project is None:
        project, _secret = create_project(user, DEMO_PROJECT, "sdk", "Seeded by `cortex demo`")
    return {"email": DEMO_EMAIL, "password": DEMO_PASSWORD, "projectId": project.id, "appId": project.app_id}


def cmd_demo(args) -> int:
    """cortex demo: seed, print how to log in, serve."""
    from cortex.http.serve import patch

    patch()
    app = _app()
    demo = seed_demo()
    base = f"http://{args.host}:{args.port}"
    print(
        f"Demo user {demo['email']} / {demo['password']}, project {demo['projectId']}\n"
        f"Log in:  curl -s -X POST {base}/api/auth/login-credentials -H 'Content-Type: application/json' "
        f"-d '{{\"email\":\"{demo['email']}\",\"password\":\"{demo['password']}\"}}'\n"
        f"API docs: {base}/api/docs/",
        flush=True,
    )
    serve_with_engines(app, args.host, args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar."""
    parser = argparse.ArgumentParser(prog="cortex", description="ODIN Cortex API server")
    commands = parser.add_subparsers(dest="command", required=True)

    def add_listen(sub):
        sub.add_argument("--host", default=os.environ.get("CORTEX_HOST", "127.0.0.1"))
        sub.add_argument("--port", type=int, default=os.environ.get("CORTEX_PORT", "8080"))  # argparse converts

    serve = commands.add_parser("serve", help="apply migrations and serve the API")
    add_listen(serve)
    serve.add_argument("--workers", type=int, default=os.environ.get("CORTEX_WORKERS", "1"),
                       help="serving processes sharing the port (default 1; CORTEX_WORKERS)")
    serve.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)  # a worker of `--workers`
    serve.set_defaults(func=cmd_serve)

    worker = commands.add_parser("worker", help="run the background engines that run outside serve (no HTTP)")
    worker.set_defaults(func=cmd_worker)

    runtime = commands.add_parser("runtime", help="run only the functions runtime supervisor (no HTTP)")
    runtime.set_defaults(func=cmd_runtime)

    demo = commands.add_parser("demo", help="seed a demo user and project, then serve")
    add_listen(demo)
    demo.set_defaults(func=cmd_demo)

    rotate = commands.add_parser("rotate-secrets", help="re-encrypt every stored secret with CORTEX_SECRET_KEY "
                                                        "(after a key change; old keys in CORTEX_SECRET_KEY_PREVIOUS)")
    rotate.set_defaults(func=cmd_rotate_secrets)

    db = commands.add_parser("db", help="database maintenance").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply pending migrations").set_defaults(func=cmd_db_upgrade)

    admin = commands.add_parser("admin", help="accounts and projects").add_subparsers(
        dest="admin_command", required=True
    )
    user = admin.add_parser("create-user", help="create a user (and a tenant unless --tenant-id)")
    user.add_argument("--email", required=True)
    user.add_argument("--password", required=True)
    user.add_argument("--name")
    user.add_argument("--tenant-id")
    user.set_defaults(func=cmd_create_user)

    project = admin.add_parser("create-project", help="create a project owned (as admin) by a user")
    project.add_argument("--owner", required=True, help="owner's email")
    project.add_argument("--name", required=True)
    project.add_argument("--type", choices=["sdk", "conferencing"], default="sdk")
    project.add_argument("--description")
    project.add_argument("--domain")
    project.set_defaults(func=cmd_create_project)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``cortex`` console script. A configuration error (e.g. a CORTEX_SECRET_KEY shorter than
    32 characters) ends it with exit status 2 and one line naming the variable."""
    from cortex.settings import ConfigurationError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigurationError as exc:
        print(f"cortex: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
