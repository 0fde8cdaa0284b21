"""deploy/ validates offline: every kustomization's resources exist and parse, every built-in Kubernetes
object passes kubernetes-validate's bundled schemas (strict: no unknown fields), the KServe objects have
the fields KServe needs, the manifests match the image (uid 10001, /models, port, probes), and nginx
accepts the rendered config (``nginx -t``, when nginx is installed)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.33.0"  # the oldest Kubernetes the manifests target (sleep preStop: >= 1.30)
KUSTOMIZATIONS = ["base", "overlays/gpu", "overlays/shared-models", "kserve"]


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kustomization(folder: Path) -> dict:
    (doc,) = _docs(folder / "kustomization.yaml")
    assert doc["kind"] == "Kustomization"
    return doc


def _resources(folder: Path) -> list[dict]:
    """The objects a kustomization lists, its bases' included (patches are not applied)."""
    objects: list[dict] = []
    for entry in _kustomization(folder).get("resources", []):
        target = (folder / entry).resolve()
        assert target.exists(), f"{folder}/kustomization.yaml lists {entry}, which does not exist"
        objects += _resources(target) if target.is_dir() else _docs(target)
    return objects


def _by_kind(folder: str) -> dict[str, dict]:
    return {o["kind"]: o for o in _resources(DEPLOY / folder)}


@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_kustomization_files_exist_and_patches_parse(folder: str) -> None:
    path = DEPLOY / folder
    doc = _kustomization(path)
    assert doc.get("resources"), f"{folder}: no resources"
    for patch in doc.get("patches", []):
        if "path" in patch:
            assert _docs(path / patch["path"]), f"{folder}: patch {patch['path']} is empty"
        else:
            assert yaml.safe_load(patch["patch"]), f"{folder}: inline patch is empty"
    assert _resources(path)


@pytest.mark.parametrize("folder", ["base", "overlays/gpu"])
def test_builtin_objects_pass_the_kubernetes_schemas(folder: str) -> None:
    objects = _resources(DEPLOY / folder)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress"]
    )
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)  # raises ValidationError


def test_a_broken_object_is_refused_by_the_schema_check() -> None:
    deployment = _by_kind("base")["Deployment"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_deployment_matches_the_image_and_drains_streams() -> None:
    objects = _by_kind("base")
    dep = objects["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    c = _container(dep)
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "USER 10001:10001" in dockerfile and "COPY models /models" in dockerfile
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "PSN_MODELS_DIR", "value": "/models"} in c["env"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    (secret,) = [e for e in c["env"] if e["name"] == "PSN_STREAM_SECRET"]
    assert secret["valueFrom"]["secretKeyRef"]["name"] == "psn-serve-stream"
    # drain: the preStop sleep plus the server's stream drain and HTTP grace fit the grace period
    sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    from server.cli import GRACE_S

    assert pod["terminationGracePeriodSeconds"] >= sleep + GRACE_S + 10
    port = c["ports"][0]
    assert port["containerPort"] == 8000 and "8000" in c["args"]
    (grpc,) = [p for p in c["ports"] if p["name"] == "grpc"]
    assert grpc["containerPort"] == 8001 and c["args"][c["args"].index("--grpc-port") + 1] == "8001"
    service_grpc = [p for p in objects["Service"]["spec"]["ports"] if p["name"] == "grpc"]
    assert service_grpc and service_grpc[0]["targetPort"] == "grpc"
    # Service, PDB and HPA select and scale this Deployment
    selector = dep["spec"]["selector"]["matchLabels"]
    assert objects["Service"]["spec"]["selector"] == selector
    assert "sessionAffinity" not in objects["Service"]["spec"]
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    assert objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    annotations = objects["Ingress"]["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600


def test_shared_models_overlay_polls_a_read_only_volume() -> None:
    """Models from a shared volume, followed while serving: poll mode, the claim mounted read-only where
    PSN_MODELS_DIR points, the claim itself valid."""
    (patch,) = _docs(DEPLOY / "overlays/shared-models/poll.yaml")
    container = _container(patch)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PSN_MODEL_CONTROL"] == "poll" and float(env["PSN_POLL_INTERVAL_S"]) > 0
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == env["PSN_MODELS_DIR"] and mount["readOnly"] is True
    (volume,) = patch["spec"]["template"]["spec"]["volumes"]
    assert volume["name"] == mount["name"] and volume["persistentVolumeClaim"]["readOnly"] is True
    claims = [
        o for o in _resources(DEPLOY / "overlays/shared-models") if o["kind"] == "PersistentVolumeClaim"
    ]
    assert [c["metadata"]["name"] for c in claims] == [volume["persistentVolumeClaim"]["claimName"]]
    for obj in claims:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    from server.settings import Settings  # every variable the patch sets is a setting

    assert {f"PSN_{name.upper()}" for name in Settings.model_fields} >= set(env)


def test_gpu_overlay_asks_for_a_gpu() -> None:
    (patch,) = _docs(DEPLOY / "overlays/gpu/gpu.yaml")
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["name"] == _container(_by_kind("base")["Deployment"])["name"]  # the patch merges by name
    images = _kustomization(DEPLOY / "overlays/gpu")["images"]
    assert images[0]["newTag"] == "gpu"
    assert images[0]["name"] == "{newName}".format(**_kustomization(DEPLOY / "base")["images"][0])


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed: rendering checked above")
@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_kubectl_kustomize_renders(folder: str) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / folder)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    if folder == "overlays/gpu":
        (dep,) = [d for d in rendered if d["kind"] == "Deployment"]
        c = _container(dep)
        assert c["image"].endswith(":gpu")
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"  # the base's fields survive the patch
    for obj in rendered:
        if obj["apiVersion"].startswith("serving.kserve.io"):
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_kserve_inference_service_is_raw_v2_with_the_v2_readiness_probe() -> None:
    objects = _by_kind("kserve")
    runtime = objects["ServingRuntime"]
    isvcs = {
        o["metadata"]["name"]: o for o in _resources(DEPLOY / "kserve") if o["kind"] == "InferenceService"
    }
    isvc, grpc = isvcs["psn-serve"], isvcs["psn-serve-grpc"]
    # gRPC: KServe's grpc-v2 protocol on the container port named h2c, the server's --grpc-port
    (container,) = runtime["spec"]["containers"]
    grpc_model = grpc["spec"]["predictor"]["model"]
    assert grpc_model["protocolVersion"] == "grpc-v2" and "grpc-v2" in runtime["spec"]["protocolVersions"]
    (h2c,) = grpc_model["ports"]
    assert (
        h2c["name"] == "h2c"
        and str(h2c["containerPort"]) == container["args"][container["args"].index("--grpc-port") + 1]
    )
    assert grpc_model["runtime"] == isvc["spec"]["predictor"]["model"]["runtime"]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    model = isvc["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2"
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert "v2" in runtime["spec"]["protocolVersions"]
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert "/mnt/models" in container["args"]  # where KServe's storage initializer puts storageUri
    # the container is a Kubernetes container: check it with the Pod schema
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [container]}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def _render():
    spec = importlib.util.spec_from_file_location("psn_nginx_render", DEPLOY / "nginx" / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nginx_config_renders_one_server_line_per_replica() -> None:
    render = _render()
    text = render.site(["10.9.0.2:8000", "10.9.0.6:8000"], "127.0.0.1:9999")
    assert text.count("server 10.9.0.") == 2 and "10.0.0.1" not in text
    assert "listen 127.0.0.1:9999;" in text
    assert "max_fails=" in text and "fail_timeout=" in text
    assert "proxy_set_header Upgrade $http_upgrade;" in text
    assert "non_idempotent" in text
    assert "grpc_pass" not in text and "http2" not in text  # gRPC only when its replicas are given
    text = render.site(["10.9.0.2:8000", "10.9.0.6:8000"], "9999", grpc=["10.9.0.2:8001", "10.9.0.6:8001"])
    assert text.count("server 10.9.0.2:8001 max_fails=") == 1 and text.count("server 10.9.0.") == 4
    assert "listen 8081 http2;" in text and "grpc_pass grpc://psn_serve_grpc;" in text
    with pytest.raises(ValueError):
        render.site([])
    with pytest.raises(ValueError):
        render.site(["10.0.0.1:8000; evil"])
    with pytest.raises(ValueError):
        render.site(["10.0.0.1:8000"], grpc=["10.0.0.1:8001; evil"])


@pytest.mark.skipif(
    shutil.which("nginx") is None, reason="nginx not installed (make cluster-test installs it)"
)
def test_nginx_accepts_the_rendered_config(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    replicas, grpc = ["127.0.0.1:18001", "127.0.0.1:18002"], ["127.0.0.1:18011", "127.0.0.1:18012"]
    conf.write_text(_render().standalone(replicas, tmp_path, "127.0.0.1:18000", "", grpc, "127.0.0.1:18010"))
    out = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert "test is successful" in out.stderr
