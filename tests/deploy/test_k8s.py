"""deploy/k8s, checked offline: no cluster runs here.

Each manifest validates with `kubernetes-validate --strict` (its schemas ship in the package)
against a pinned Kubernetes version, and a broken copy fails that same check. The
kustomization lists every manifest and names the image in one place; rendered the way
kustomize renders those two fields, the Deployment runs that image, and the objects fit
together (selectors, ports, probes, the autoscaler's target), and the pods carry the
annotations a cluster's Prometheus discovers them by.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.34.0"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def validate(*paths: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "kubernetes_validate", "--strict"]
    command += ["--kubernetes-version", KUBERNETES_VERSION, *map(str, paths)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def rendered() -> dict[str, dict]:
    """The kustomization's objects by kind, with its `images` applied, as kustomize does.
    It uses only `resources` and `images` (checked below), so this is all of kustomize
    that it needs."""
    config = kustomization()
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in config["images"]}
    objects = {}
    for name in config["resources"]:
        for obj in yaml.safe_load_all((K8S / name).read_text()):
            for container in (
                obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
            ):
                container["image"] = images.get(container["image"], container["image"])
            objects[obj["kind"]] = obj
    return objects


def test_each_manifest_validates_strictly() -> None:
    assert {p.name for p in MANIFESTS} == {
        "deployment.yaml",
        "service.yaml",
        "hpa.yaml",
        "pdb.yaml",
    }
    result = validate(*MANIFESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    for path in MANIFESTS:
        assert f"{path} passed" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("readinessProbe:", "readinesProbe:", "'readinesProbe' was unexpected"),
        ("containerPort: 3000", 'containerPort: "3000"', "is not of type 'integer'"),
        # Annotations are strings: an unquoted true is a YAML boolean, refused by the API.
        ('prometheus.io/scrape: "true"', "prometheus.io/scrape: true", "is not of type 'string'"),
    ],
)
def test_a_broken_manifest_fails_validation(tmp_path: Path, old: str, new: str, complaint) -> None:
    text = (K8S / "deployment.yaml").read_text()
    assert old in text
    broken = tmp_path / "deployment.yaml"
    broken.write_text(text.replace(old, new))
    result = validate(broken)
    assert result.returncode != 0
    assert complaint in result.stdout + result.stderr


def test_kustomization_lists_every_manifest_and_names_the_image_once() -> None:
    config = kustomization()
    assert set(config) == {"apiVersion", "kind", "resources", "images"}
    assert sorted(config["resources"]) == [p.name for p in MANIFESTS]
    [image] = config["images"]
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text())
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == image["name"]  # a bare name: the reference lives in one place
    for path in MANIFESTS:
        assert image["newName"] not in path.read_text()


def test_the_objects_fit_together() -> None:
    objects = rendered()
    deployment, service = objects["Deployment"], objects["Service"]
    hpa, pdb = objects["HorizontalPodAutoscaler"], objects["PodDisruptionBudget"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]  # a drain can proceed
    [container] = pod["spec"]["containers"]
    image = kustomization()["images"][0]
    assert container["image"] == f"{image['newName']}:{image['newTag']}"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 3000}  # BentoML's port in the image
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["MNIST_WORKERS"]) == int(container["resources"]["limits"]["cpu"])


def test_the_pods_ask_prometheus_to_scrape_their_metrics() -> None:
    """The annotations a pod-discovering Prometheus keeps pods by (docs/serving.md): on the
    pod template, where the pods get them, naming the named port BentoML serves on."""
    deployment = rendered()["Deployment"]
    pod = deployment["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    [container] = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(ports["http"]),
        "prometheus.io/path": "/metrics",
    }
    # Only the pods ask: the Service too would have a cluster scrape every pod twice.
    for obj in rendered().values():
        if obj is not deployment:
            assert "prometheus.io/scrape" not in obj["metadata"].get("annotations", {})


def test_the_pod_runs_as_non_root_on_a_read_only_root() -> None:
    pod = rendered()["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    [container] = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # What `bentoml serve` writes (tests/deploy/test_image.py runs the image read-only too).
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert env["BENTOML_HOME"].startswith("/tmp/")
    assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_renders_what_the_tests_check() -> None:
    """Where kubectl is installed: its kustomize gives the objects rendered() gives."""
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    by_kind = {obj["kind"]: obj for obj in yaml.safe_load_all(result.stdout)}
    assert by_kind == rendered()
