"""Peewee models and the domain rules that belong to them, usable without HTTP.

Models import only pure libraries (peewee, ``cortex.lib``) and each other, and raise only
``models.base.DomainError``. ``models.database`` binds the deferred database, ``models.migrations`` holds the
schema history.
"""
