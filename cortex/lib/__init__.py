"""Pure code: no HTTP, no database, no outside services — the only ``cortex`` code ``models/`` may import.

``crypto`` (password hashes, token hashes, encryption at rest), ``odin`` (ODIN access keys, key ids, room
tokens, JWKs), ``coalesce`` (serving queued items of many greenlets in batches), ``webhook_signing``
(Standard Webhooks signatures), ``background`` (background loops: a greenlet under gevent, else a thread).
"""
