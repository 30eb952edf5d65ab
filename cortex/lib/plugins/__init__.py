"""The plugin catalogue: every plugin this server offers, as code.

A plugin is one module of this package that defines ``PLUGIN``, a frozen
:class:`~cortex.lib.plugins.base.PluginDefinition`, and is listed in :data:`CATALOGUE` — the one place plugins
are registered. Everything else (the ``/plugins`` catalogue, instances and their settings validation, the plugin
engine running analyzers on new messages and ended sessions, annotations) reads the catalogue.

Writing a new plugin:

1. Add ``cortex/lib/plugins/<name>.py``. It is pure code like the rest of ``cortex/lib``: the standard library
   and third-party libraries only — no ``models``, no ``cortex.http``/``cortex.engines``, no flask, no HTTP
   client (a session plugin that calls out gets ``ctx.post_json``, which goes through the server's outbound
   address policy).
2. Define ``PLUGIN = PluginDefinition(...)`` with a fixed UUID literal as ``id`` (generate it once; it must be
   the same on every install and never change), a unique ``slug``, ``version``, ``category``, the ``events`` it
   handles, the ``annotation_type`` it writes (one of the OpenAPI ``outputAnnotationType`` values), its
   ``settings`` (:class:`~cortex.lib.plugins.base.SettingField`; ``validate_settings`` checks them, ``check``
   adds cross-field rules) and its analyzer:

   - ``on_message(text, settings) -> dict | None`` for ``("message.created",)``: called for every chat line,
     so keep it in the microseconds (build expensive state once, at import or cached);
   - ``on_session_end(lines, settings, ctx) -> dict | None`` for ``("session.ended",)``: the whole transcript;
     raise ``PluginError`` (a message without secrets) when the run fails.

   Return ``None`` for "no annotation"; otherwise a JSON-serialisable dict, the annotation's data.
3. Add ``<name>.PLUGIN`` to :data:`CATALOGUE` below and tests (``tests/test_plugin_analyzers.py``).
"""

from __future__ import annotations

from . import action_items, profanity, sentiment, summary
from .base import PluginDefinition

__all__ = ["BY_ID", "BY_SLUG", "CATALOGUE", "find"]

CATALOGUE: tuple[PluginDefinition, ...] = (profanity.PLUGIN, sentiment.PLUGIN, summary.PLUGIN, action_items.PLUGIN)

BY_ID = {plugin.id: plugin for plugin in CATALOGUE}
BY_SLUG = {plugin.slug: plugin for plugin in CATALOGUE}
if len(BY_ID) != len(CATALOGUE) or len(BY_SLUG) != len(CATALOGUE):
    raise RuntimeError("plugin ids and slugs must be unique")


def find(ref: str) -> PluginDefinition | None:
    """The plugin with this id (UUID) or slug, or None."""
    if not isinstance(ref, str):
        return None
    return BY_ID.get(ref.lower()) or BY_SLUG.get(ref)
