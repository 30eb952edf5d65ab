"""Functions tag: the project's runtime — settings, activation, lifecycle, versions, dependencies and environment
(``models.functions``; the supervisor, ``cortex.engines.functions``, does the work through the provider,
``cortex.integrations.functions``) — and the functions themselves: drafts, versions, publish, deploy, logs
(``models.function_code``) and invocation (``cortex.http.invoke``)."""

from cortex.engines import functions as runtime_ops
from cortex.engines.functions import package_info
from cortex.http.app import current_settings, functions_provider, npm_client
from cortex.http.invoke import invoke
from models import function_code, functions


def _versions():
    return [version.version for version in functions_provider().versions()]


def get_settings(project):
    """GET …/functions/settings."""
    return functions.get_settings(project)


def update_settings(project, body):
    """PUT …/functions/settings: limits within this server's ceilings (400 beyond)."""
    settings = current_settings()
    return functions.update_settings(project, body, settings.functions_max_functions,
                                     settings.functions_max_memory_mb)


def verify_fleet_credentials(principal, project):
    """POST …/functions/settings/verify-credentials: the local provider needs no outside credentials."""
    return functions.verify_credentials(principal.user_id)


def get_resource_packages(project):
    """GET …/functions/settings/resource-packages: what each function worker gets on this provider."""
    return [package.body() for package in functions_provider().resource_packages()]


def get_deployment_locations(project):
    """GET …/functions/settings/locations: this host."""
    return [location.body() for location in functions_provider().locations()]


def activate_functions(project, body):
    """POST …/functions/settings/activate: 201; the supervisor walks the steps (poll getSettings)."""
    provider = functions_provider()
    functions.activate(project, body, {p.slug: p.body() for p in provider.resource_packages()},
                       [location.body() for location in provider.locations()], _versions()[-1])
    return {"message": "Activation started"}, 201


def update_dependencies(project, body):
    """PUT …/functions/settings/dependencies: validated, then installed by the supervisor."""
    settings = functions.update_dependencies(project, body["dependencies"])
    message = ("Dependencies saved; they are installed on activation" if not settings["isActivated"]
               else "Dependencies updated. Installing, then the runtime restarts")
    return {"settings": settings, "message": message}


def update_env_vars(project, body):
    """PUT …/functions/settings/env-vars: replaces the list; secrets masked in every answer."""
    settings = functions.update_env_vars(project, body["envVars"])
    message = ("Environment variables updated. Runtime restarting..." if settings["isActivated"]
               else "Environment variables saved")
    return {"settings": settings, "message": message}


def get_npm_package_info(project, package_name):
    """GET …/functions/npm-package/{packageName}: from CORTEX_NPM_REGISTRY (cached a few minutes)."""
    return package_info(npm_client(), package_name)


def get_runtime_status(project):
    """GET …/functions/settings/runtime-status: what the supervisor last observed."""
    return functions.runtime_status(project, _versions()[-1])


def start_runtime(project):
    """POST …/functions/settings/runtime/start: 400 unless activated."""
    return functions.set_desired(project, "running")


def stop_runtime(project):
    """POST …/functions/settings/runtime/stop: 400 unless activated."""
    return functions.set_desired(project, "stopped")


def restart_runtime(project):
    """POST …/functions/settings/runtime/restart: 400 unless activated."""
    return functions.set_desired(project, "running", restart=True)


def get_runtime_versions(project):
    """GET …/functions/settings/runtime/versions: the versions this server ships, oldest first."""
    return functions.versions_body(project, [version.body() for version in functions_provider().versions()])


def upgrade_runtime(project, body):
    """POST …/functions/settings/runtime/upgrade: pin a known version and restart on it."""
    versions = _versions()
    return functions.upgrade(project, body["version"], versions, versions[-1])


# ---------------------------------------------------------------- functions


def list_functions(project):
    """GET …/functions: oldest first."""
    return function_code.list_functions(project)


def create_function(project, body):
    """POST …/functions: 400 for bad fields or beyond maxFunctions, 409 for a taken slug."""
    return function_code.create_function(project, body, functions_provider().node_major()), 201


def get_function(project, function_id):
    """GET …/functions/{functionId}."""
    return function_code.function_body(function_code.get_function(project, function_id))


def update_function(project, function_id, body):
    """PUT …/functions/{functionId}: the draft only."""
    return function_code.update_function(project, function_id, body, functions_provider().node_major())


def delete_function(project, function_id):
    """DELETE …/functions/{functionId}: versions, deployments and logs go; invoking it is 404."""
    return runtime_ops.delete(functions_provider(), project, function_id)


def list_versions(project, function_id):
    """GET …/functions/{functionId}/versions: newest first."""
    return function_code.list_versions(project, function_id)


def publish_version(principal, project, function_id, body=None):
    """POST …/functions/{functionId}/publish: version N+1, built; a ready one goes live at once."""
    return runtime_ops.publish(functions_provider(), project, function_id, principal.user_id,
                               (body or {}).get("changelog"), current_settings().public_url), 201


def deploy_function(project, function_id, version_id=None):
    """POST …/functions/{functionId}/deploy[?versionId=…]: the newest ready version, or a rollback."""
    return runtime_ops.deploy(functions_provider(), project, function_id, version_id,
                              current_settings().public_url), 201


def stop_deployment(project, function_id):
    """POST …/functions/{functionId}/stop: off the runtime (invoke → 503) until the next deploy or publish."""
    return runtime_ops.stop(functions_provider(), project, function_id)


def get_function_logs(project, function_id, limit=None, since=None):
    """GET …/functions/{functionId}/logs: newest first."""
    return function_code.function_logs(project, function_id, limit, since)


# ---------------------------------------------------------------- invocation (ANY /invoke/{projectId}/{slug})


def invoke_function(project_id, slug):
    """ANY /invoke/{projectId}/{slug} (one operation per method in the document; one handler)."""
    return invoke(functions_provider(), project_id, slug)


invoke_function_get = invoke_function_put = invoke_function_patch = invoke_function_delete = invoke_function
