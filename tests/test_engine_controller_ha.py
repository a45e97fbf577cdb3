"""Several load balancers through the real engine and Kubernetes provider (render mode): the
Kubernetes example deploys two agent pods by default with their PodDisruptionBudget, every
rendered object passes kubernetes-validate, and changing ``skyform:controllerReplicas``
2 -> 3 -> 2 updates the Deployment alone (no replica, nothing replaced)."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pulumi.automation as auto
import pytest
from engine_support import EngineProject, objects_by_kind, rendered_objects
from test_engine_kubernetes import K8S_STACK, K8S_VERSION, RENDER_DIR, _init_k8s

pytestmark = pytest.mark.engine


def _urns(project: EngineProject) -> set[str]:
    data: dict[str, Any] = json.loads(project.cli("stack", "export").stdout)
    return {r["urn"] for r in data["deployment"]["resources"]
            if r["type"] not in ("pulumi:pulumi:StackReference", "pulumi:providers:pulumi")}


def test_load_balancers_render_and_scale_without_touching_the_replicas(
        tmp_path: Any) -> None:
    project = EngineProject.create(tmp_path)
    _init_k8s(project)
    stack = project.stack(K8S_STACK)
    rendered = project.dir / RENDER_DIR
    assert stack.up().summary.result == "succeeded"
    objects = rendered_objects(rendered)
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    [deployment] = objects_by_kind(objects, "Deployment").values()
    assert deployment["spec"]["replicas"] == 2
    [budget] = objects_by_kind(objects, "PodDisruptionBudget").values()
    assert budget["spec"]["maxUnavailable"] == 1
    config = json.loads(objects_by_kind(objects, "ConfigMap")["hello-controller-files"]
                        ["data"]["agent.json"])
    assert config["lease"]["kind"] == "kubernetes"
    sets_before = objects_by_kind(objects, "StatefulSet")
    urns_before = _urns(project)

    for count in (3, 2):
        project.cli("config", "set", "skyform:controllerReplicas", str(count))
        events: list[auto.EngineEvent] = []
        step = stack.up(on_event=events.append)
        steps = {(e.resource_pre_event.metadata.op.value,
                  e.resource_pre_event.metadata.urn.rsplit("::", 1)[1])
                 for e in events if e.resource_pre_event
                 and e.resource_pre_event.metadata.op.value not in ("same", "read")}
        # The Deployment's count, and the controller's copy of the project: the stack file
        # is in its bundle (a Secret) whose digest its start-up script (a ConfigMap) checks,
        # so both are rewritten, and the pods' supervisor installs the new bundle. No replica
        # object, no pod template.
        assert steps == {("update", "service-controller-deployment"),
                         *{(op, name) for op in ("replace", "create-replacement",
                                                 "delete-replaced")
                           for name in ("service-controller-project",
                                        "service-controller-files")}}, steps
        objects = rendered_objects(rendered)
        [after] = objects_by_kind(objects, "Deployment").values()
        assert after["spec"]["replicas"] == count
        assert after["spec"]["template"] == deployment["spec"]["template"]
        assert objects_by_kind(objects, "StatefulSet") == sets_before
        assert step.outputs["controllerReplicas"].value == count
    assert _urns(project) == urns_before
    project.cli("destroy", "--yes", "--skip-preview")
