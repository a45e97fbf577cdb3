"""The Pulumi program: the stack's SkyServe service YAML as one ``SkyService`` component.

It reads the ``skyform:*`` stack config (schema in Pulumi.yaml), parses the YAML, builds the
service on ``skyform:cloud`` and exports the stack outputs the agent and users rely on:
endpoint, controllerAddress, replicaCount, controllerReplicas (the load balancers running the
agent), fleet (the replica groups per generation, which
the next ``up`` reads back), hourlyCost, replicas, replicaGroupUrns, adminUrl and the secret
adminToken (for ``skyform status --stack``). A bad YAML, an unplaceable service or a bad
config value stops the program with a clear message (no traceback).

It lives in the package so an installed skyform carries it: the project's ``__main__.py``
(what ``pulumi up`` runs) calls ``main`` with the project directory, and ``skyform synth``
calls it under mocks.
"""

from __future__ import annotations

from pathlib import Path

import pulumi

from components.errors import PlacementError, SpecError
from components.parser import SpecFileError
from components.service import SkyService, SkyServiceArgs, load_task
from components.stack_config import StackConfigError, read_stack_settings


def main(project_dir: Path) -> None:
    """Declare the service of this stack; ``project_dir`` holds Pulumi.yaml and the stacks'
    files, against which relative paths in the config resolve."""
    try:
        settings = read_stack_settings()
        task = load_task(settings, project_dir)
        opts = None
        if settings.cloud == "kubernetes" and settings.render_yaml_to_directory:
            from components.clouds.kubernetes import render_provider

            # The path as configured: a relative one resolves against the project directory
            # (the engine's working directory) and stays the same input on every machine,
            # so the controller's copy of the project diffs clean against the user's.
            opts = pulumi.ResourceOptions(providers=[render_provider(
                "render", settings.render_yaml_to_directory)])
        service = SkyService(
            "service",
            SkyServiceArgs(task=task, settings=settings, stack=pulumi.get_stack(),
                           project_dir=project_dir),
            opts,
        )
    except (SpecError, SpecFileError, PlacementError, StackConfigError) as exc:
        raise pulumi.RunError(str(exc)) from exc
    pulumi.export("endpoint", service.endpoint)
    pulumi.export("controllerAddress", service.controller_address)
    pulumi.export("replicaCount", service.replica_count)
    pulumi.export("controllerReplicas", service.controller_replicas)
    pulumi.export("fleet", service.fleet)
    pulumi.export("locations", service.locations)
    pulumi.export("hourlyCost", service.hourly_cost)
    pulumi.export("replicas", service.replicas)
    pulumi.export("replicaGroupUrns", service.replica_group_urns)
    pulumi.export("adminUrl", service.admin_url)
    pulumi.export("adminToken", service.admin_token)
