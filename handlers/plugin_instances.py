"""Plugin Instances tag: the plugins a project installed, with their validated settings (``models.plugins``;
password settings encrypted at rest and always shown masked)."""

from models import plugins


def list_instances(project):
    """GET …/plugins/instances: oldest first, each with its plugin."""
    return plugins.list_instances(project)


def create_instance(project, body):
    """POST …/plugins/instances: 400 for settings the plugin's schema refuses, 404 unknown plugin, 409 installed."""
    return plugins.create_instance(project, body), 201


def get_instance(project, id_):
    """GET …/plugins/instances/{id}: with its plugin."""
    return plugins.instance_body(plugins.get_instance(project, id_), embed=True)


def update_instance(project, id_, body):
    """PUT …/plugins/instances/{id}: merge settings, enable or disable."""
    return plugins.update_instance(project, id_, body)


def delete_instance(project, id_):
    """DELETE …/plugins/instances/{id}: its annotations stay."""
    return plugins.delete_instance(project, id_)
