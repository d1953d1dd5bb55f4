"""deploy/kubernetes against the Kubernetes schemas (kubernetes-validate bundles them: offline), and
against the product: the metric the autoscalers read is the one the API exports, the ports and the
user are the image's. KEDA's ScaledObject has no schema there; it is checked for what it points at."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from layerdiffuse_server.observability.metrics import StoreCollector
from layerdiffuse_server.store import Store

ROOT = Path(__file__).parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.37"
#: Kinds of add-ons whose schemas kubernetes-validate does not carry.
ADD_ON_API_GROUPS = ("keda.sh/",)


def resources() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        found += [(path.name, document) for document in yaml.safe_load_all(path.read_text()) if document]
    return found


def named(kind: str, name: str) -> dict:
    return next(
        resource for _, resource in resources() if resource["kind"] == kind and resource["metadata"]["name"] == name
    )


@pytest.mark.parametrize(
    "resource",
    [resource for _, resource in resources() if not resource["apiVersion"].startswith(ADD_ON_API_GROUPS)],
    ids=lambda resource: f"{resource['kind']}/{resource['metadata']['name']}",
)
def test_each_manifest_passes_the_strict_kubernetes_schema(resource: dict) -> None:
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_the_autoscalers_read_the_queue_depth_the_api_exports(store: Store) -> None:
    exported = {family.name for family in StoreCollector(store).collect()}
    hpa = named("HorizontalPodAutoscaler", "layerdiffuse-worker")
    keda = named("ScaledObject", "layerdiffuse-worker")
    assert hpa["spec"]["metrics"][0]["external"]["metric"]["name"] in exported
    query_metrics = set(re.findall(r"layerdiffuse_\w+", keda["spec"]["triggers"][0]["metadata"]["query"]))
    assert query_metrics and query_metrics <= exported
    worker = named("Deployment", "layerdiffuse-worker")
    assert hpa["spec"]["scaleTargetRef"]["name"] == keda["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]


def test_pods_run_as_the_image_user_on_the_image_ports() -> None:
    user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Containerfile").read_text(), re.MULTILINE)
    assert user is not None
    expected = {"api": 8080, "worker": 9090}  # LAYERDIFFUSE_PORT and LAYERDIFFUSE_WORKER_PORT's defaults
    for role, port in expected.items():
        pod = named("Deployment", f"layerdiffuse-{role}")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == int(user.group(1))
        container = pod["containers"][0]
        assert container["args"] == [role]
        assert [entry["containerPort"] for entry in container["ports"]] == [port]
        # longer than the default LAYERDIFFUSE_SHUTDOWN_GRACE_SECONDS (20 s): the drain is not cut short
        assert pod["terminationGracePeriodSeconds"] > 20


def test_the_worker_asks_for_a_gpu_and_the_service_selects_the_api_pods() -> None:
    worker = named("Deployment", "layerdiffuse-worker")["spec"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    service = named("Service", "layerdiffuse-api")
    api_labels = named("Deployment", "layerdiffuse-api")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= api_labels.items()
