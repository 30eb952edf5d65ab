"""Functions runtimes: where a project's Node.js runtime runs, behind one interface.

A *runtime provider* runs one Node.js *runtime* per activated project — an HTTP server (``node/runtime-vN.js``)
that will host the project's functions — and does only the mechanics: prepare the project's place, install its
npm dependencies, write its configuration, start, health-check, recognise, stop and remove the runtime. The
functions supervisor (``cortex.engines``) decides when each happens, holds the per-project lease and stores the
:class:`~cortex.integrations.functions.provider.RuntimeHandle` a start returns in the database.

The contract is :class:`~cortex.integrations.functions.provider.RuntimeProvider` (``provider.py``: the protocol,
its values and :class:`~cortex.integrations.functions.provider.RuntimeUnavailable`). In short:

* ``versions()`` (oldest first), ``resource_packages()``, ``locations()``: the provider's catalogue.
* ``prepare`` → ``install`` (npm, staged, swapped in only on success; failures answer ``InstallResult(ok=False)``)
  → ``write_config`` → ``start`` (returns a handle at once) → poll ``health`` until it answers.
* ``alive`` / ``health`` / ``stop`` work from a handle alone, also one loaded by another process; ``stop`` is
  idempotent and never signals a process that is not the handle's runtime.
* A runtime talks only to loopback (or the provider's private network), answers only requests with the handle's
  token in ``X-Cortex-Runtime-Token``, and its functions' environment is exactly the config's ``env`` plus
  ``CORTEX_API_URL`` and ``CORTEX_PROJECT_ID`` — nothing of the server's environment.

Providers: ``local`` (``local.py``: child processes on this host). A Fleet or Kubernetes provider implements the
same protocol.
"""
