"""Peewee models and the domain rules that belong to them (usable without HTTP)."""

from models import identity


def _v1_identity(database):
    """Tenants, users, Fusion sessions, projects, members, API keys."""
    database.create_tables(identity.MODELS, safe=True)


#: Versioned migrations: (version, name, function(database)). Append only; never edit an applied one.
MIGRATIONS = [
    (1, "identity and projects", _v1_identity),
]
