"""Functions tag, part 1: the project's runtime — settings, activation, lifecycle, versions, dependencies and
environment (``models.functions``; the work is done by the supervisor, ``cortex.engines.functions``, through the
provider, ``cortex.integrations.functions``). Function code, versions and invocation: issue 18."""

from cortex.engines.functions import package_info
from cortex.http.app import current_settings, functions_provider, npm_client
from models import functions


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
