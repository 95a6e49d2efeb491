"""Every Kubernetes manifest validates against the Kubernetes schemas (kubernetes-validate, offline,
strict: unknown fields fail), the Kaito Workspace against Kaito's CRD schema, and the Deployment
agrees with the preset it serves."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import ValidationError as K8sValidationError

from server.config import load_settings
from server.env_vars import ENV_VARS
from server.kaito_flags import flags_to_env
from server.presets import load_preset

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"


def _shared_dirs() -> list[Path]:
    """shared/ beside the clone (CI); SHARED_DIR; beside the main checkout of a git worktree."""
    dirs = [REPO.parent / "shared"]
    if os.environ.get("SHARED_DIR"):
        dirs.insert(0, Path(os.environ["SHARED_DIR"]))
    common = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=REPO,
                            capture_output=True, text=True)
    if common.returncode == 0 and common.stdout.strip():
        dirs.append(Path(common.stdout.strip()).parent.parent / "shared")
    return dirs


CRD = next((d / "reference" / "kaito.sh_workspaces.yaml" for d in _shared_dirs()
            if (d / "reference" / "kaito.sh_workspaces.yaml").is_file()),
           REPO.parent / "shared" / "reference" / "kaito.sh_workspaces.yaml")
K8S_VERSION = "1.31.0"
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))
WORKSPACE = DEPLOY / "kaito" / "workspace.yaml"


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(kind: str) -> dict:
    found = [d for p in MANIFESTS for d in docs(p) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def k8s_validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_manifests_are_all_there():
    kinds = {d["kind"] for p in MANIFESTS for d in docs(p)}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates(path):
    for doc in docs(path):
        k8s_validate(doc)


def test_validation_has_teeth():
    deployment = by_kind("Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["httpGet"]["portt"] = 5000
    with pytest.raises(K8sValidationError):
        k8s_validate(broken)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replicas"] = "one"
    with pytest.raises(K8sValidationError):
        k8s_validate(broken)


def test_deployment_probes_drain_shm_and_gpus():
    deployment = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": 5000}, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # slow model loads
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    graceful = int({e["name"]: e["value"] for e in container["env"]}["GRACEFUL_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] >= pause + graceful
    shm = {v["name"]: v for v in pod["volumes"]}[
        {m["mountPath"]: m["name"] for m in container["volumeMounts"]}["/dev/shm"]
    ]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert container["ports"][0]["containerPort"] == 5000


def test_deployment_resources_come_from_its_preset():
    deployment = by_kind("Deployment")
    name = deployment["metadata"]["annotations"]["inferbox.dev/preset"]
    preset = load_preset(name)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PRESET"] == name and name in container["image"]
    res = container["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == str(preset.resources.gpus)
    assert res["requests"]["cpu"] == preset.resources.cpu
    assert res["requests"]["memory"] == res["limits"]["memory"] == preset.resources.memory


def test_service_maps_80_to_5000_and_selects_the_pods():
    service, deployment = by_kind("Service"), by_kind("Deployment")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(80, 5000)]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert by_kind("PodDisruptionBudget")["spec"]["selector"] == deployment["spec"]["selector"]


def test_hpa_scales_the_deployment_on_queue_depth():
    hpa, deployment = by_kind("HorizontalPodAutoscaler"), by_kind("Deployment")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] in ("Pods", "External")
    assert metric[metric["type"].lower()]["metric"]["name"] == "inferbox_queue_depth"
    # the name the server exports on /metrics
    assert "inferbox_queue_depth" in (REPO / "server" / "observability" / "metrics.py").read_text()


# --- Kaito Workspace -------------------------------------------------------------------------------


def workspace_schema() -> dict:
    if not CRD.is_file():
        pytest.skip(f"Kaito's Workspace CRD is not at {CRD} (CI keeps shared/ beside the clone)")
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    return version["schema"]["openAPIV3Schema"]


def test_workspace_validates_against_kaitos_crd():
    workspace = docs(WORKSPACE)[0]
    assert workspace["apiVersion"] == "kaito.sh/v1beta1" and workspace["kind"] == "Workspace"
    jsonschema.validate(workspace, workspace_schema())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda w: w["resource"].pop("labelSelector"),  # required by the CRD
        lambda w: w["resource"].__setitem__("count", "two"),
        lambda w: w["inference"].__setitem__("preset", {"accessMode": "public"}),  # preset needs name
    ],
)
def test_workspace_schema_rejects(mutate):
    schema = workspace_schema()
    workspace = docs(WORKSPACE)[0]
    mutate(workspace)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(workspace, schema)


def test_workspace_template_is_a_valid_pod_template_running_our_image():
    """The CRD keeps `inference.template` opaque, so check it as the PodTemplateSpec Kaito uses."""
    workspace = docs(WORKSPACE)[0]
    template = workspace["inference"]["template"]
    k8s_validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template})
    (container,) = template["spec"]["containers"]
    assert container["image"] == by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert "tfs/inference_api.py" in container["args"]
    assert container["resources"]["requests"]["nvidia.com/gpu"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": 5000}
    assert (REPO / "inference_api.py").is_file()  # what tfs/inference_api.py is in the image


# --- adapters ----------------------------------------------------------------------------------------

WORKSPACE_ADAPTERS = DEPLOY / "kaito" / "workspace-adapters.yaml"
ADAPTER_DEPLOYMENT = DEPLOY / "adapters" / "deployment.yaml"


def test_workspace_with_adapters_validates_against_kaitos_crd():
    workspace = docs(WORKSPACE_ADAPTERS)[0]
    schema = workspace_schema()
    jsonschema.validate(workspace, schema)
    adapters = workspace["inference"]["adapters"]
    assert len(adapters) >= 2
    for a in adapters:
        assert a["source"]["name"] and a["source"]["image"]
        assert isinstance(a["strength"], str) and 0 <= float(a["strength"]) <= 1  # the CRD's string type
    template = workspace["inference"]["template"]
    k8s_validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template})
    broken = yaml.safe_load(yaml.safe_dump(workspace))
    broken["inference"]["adapters"][0]["strength"] = 0.5  # a number where Kaito wants a string
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_adapter_deployment_mounts_a_volume_at_the_adapters_dir():
    manifests = docs(ADAPTER_DEPLOYMENT)
    for doc in manifests:
        k8s_validate(doc)
    (deployment,) = [d for d in manifests if d["kind"] == "Deployment"]
    (claim,) = [d for d in manifests if d["kind"] == "PersistentVolumeClaim"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    adapters_dir = env["ADAPTERS_DIR"]["value"]
    assert adapters_dir == "/mnt/adapter"  # Kaito's path, the server's default
    mount = {m["mountPath"]: m for m in container["volumeMounts"]}[adapters_dir]
    assert mount["readOnly"] is True
    volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert env["ADMIN_API_KEYS"]["valueFrom"]["secretKeyRef"]["key"]  # never a literal key
    # the settings it sets are ones the server reads
    for name in ("ADAPTERS_DIR", "DEFAULT_ADAPTER", "MAX_LOADED_ADAPTERS", "ADMIN_API_KEYS"):
        if name not in ENV_VARS:
            pytest.fail(f"{name} is not a setting the server reads (server/config.py)")


# --- tensor parallelism ------------------------------------------------------------------------------

LWS_CRD = REPO / "tests" / "deploy" / "crds" / "leaderworkerset.x-k8s.io_leaderworkersets.yaml"
LEADER_WORKER_SET = DEPLOY / "tensor-parallel" / "leaderworkerset.yaml"
WORKSPACE_TP = DEPLOY / "kaito" / "workspace-tensor-parallel.yaml"
LWS_LABEL = "leaderworkerset.sigs.k8s.io/"
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
READ_BY_CONFIG = ("PRESET",)  # read by load_settings besides ENV_VARS


def lws_schema() -> dict:
    """The LeaderWorkerSet CRD kept beside these tests (from kubernetes-sigs/lws, Apache-2.0)."""
    crd = yaml.safe_load(LWS_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def lws_docs() -> dict[str, dict]:
    return {d["kind"]: d for d in docs(LEADER_WORKER_SET)}


def test_leaderworkerset_validates_against_its_crd():
    manifests = lws_docs()
    lws = manifests["LeaderWorkerSet"]
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    jsonschema.validate(lws, lws_schema())
    for role in ("leaderTemplate", "workerTemplate"):  # and strictly, as the pod templates LWS stamps out
        pod = lws["spec"]["leaderWorkerTemplate"][role]
        k8s_validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": pod})
    k8s_validate(manifests["Service"])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s["leaderWorkerTemplate"].__setitem__("size", "two"),
        lambda s: s["leaderWorkerTemplate"].__setitem__("restartPolicy", "Always"),
        lambda s: s.__setitem__("startupPolicy", "WorkersFirst"),
        lambda s: s["leaderWorkerTemplate"].pop("workerTemplate"),  # required by the CRD
    ],
)
def test_leaderworkerset_schema_rejects(mutate):
    lws = lws_docs()["LeaderWorkerSet"]
    mutate(lws["spec"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(lws, lws_schema())


def test_leader_is_rank_0_behind_the_service_and_the_workers_join_it():
    manifests = lws_docs()
    lws, service = manifests["LeaderWorkerSet"], manifests["Service"]
    group = lws["spec"]["leaderWorkerTemplate"]
    # only the leader (worker index 0) of this set serves HTTP
    assert service["spec"]["selector"] == {f"{LWS_LABEL}name": lws["metadata"]["name"],
                                           f"{LWS_LABEL}worker-index": "0"}
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(80, 5000)]
    assert group["restartPolicy"] == "RecreateGroupOnPodRestart"  # a lost rank restarts the group
    containers = {}
    for role in ("leaderTemplate", "workerTemplate"):
        (container,) = group[role]["spec"]["containers"]
        containers[role] = container
        env = {e["name"]: e for e in container["env"]}
        assert env["TENSOR_PARALLEL"]["value"] == str(group["size"])
        rank = env["RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert rank == f"metadata.labels['{LWS_LABEL}worker-index']"  # the downward API
        assert env["WORLD_SIZE"]["value"] == "$(LWS_GROUP_SIZE)"
        assert env["MASTER_ADDR"]["value"] == "$(LWS_LEADER_ADDRESS)"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"  # one rank per pod
        assert container["image"] == f"inferbox:{lws['metadata']['annotations']['inferbox.dev/preset']}"
        for name in env:  # settings the server reads, or torchrun's variables
            assert name in ENV_VARS or name in (*TORCHRUN_VARS, *READ_BY_CONFIG), name
    leader, worker = containers["leaderTemplate"], containers["workerTemplate"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert leader[probe]["httpGet"] == {"path": "/health", "port": 5000}, probe
        assert probe not in worker  # readiness is the leader's /health
    assert 5000 in [p["containerPort"] for p in leader["ports"]] and "ports" not in worker


def test_every_rank_of_the_leaderworkerset_is_a_configuration_the_server_takes():
    """The variables each pod gets (LWS's substituted) load as settings: no refusal at start."""
    group = lws_docs()["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]
    lws = {"LWS_GROUP_SIZE": str(group["size"]), "LWS_LEADER_ADDRESS": "inferbox-tp-0.inferbox-tp"}
    for role, rank in (("leaderTemplate", 0), ("workerTemplate", 1)):
        (container,) = group[role]["spec"]["containers"]
        env = {e["name"]: e.get("value", "") for e in container["env"]}
        env = {k: re.sub(r"\$\((\w+)\)", lambda m: lws[m.group(1)], v) for k, v in env.items()}
        env["RANK"] = str(rank)  # the downward API's worker index
        settings = load_settings(env)
        assert (settings.tensor_parallel, settings.rank) == (group["size"], rank)


def test_tensor_parallel_workspace_validates_against_kaitos_crd():
    workspace = docs(WORKSPACE_TP)[0]
    jsonschema.validate(workspace, workspace_schema())
    assert workspace["resource"]["count"] == 2
    template = workspace["inference"]["template"]
    k8s_validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template})
    (container,) = template["spec"]["containers"]
    args = container["args"]
    assert args[0] == "launch" and "tfs/inference_api.py" in args
    launcher = [a for a in args[1:] if a != "tfs/inference_api.py"]
    gpus = container["resources"]["requests"]["nvidia.com/gpu"]
    assert flags_to_env(launcher)["TENSOR_PARALLEL"] == gpus == "4"  # --num_processes: one rank a GPU
