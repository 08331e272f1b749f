"""The cluster configs parse and carry what Ray's cluster launcher and the KubeRay CRDs require.

* ``cluster/aws-gpu.yaml`` goes through Ray's own launcher validation (the JSON schema shipped in
  ``ray/autoscaler/ray-schema.json``, then ``prepare_config`` + ``validate_config`` as ``ray up`` does).
* ``cluster/kuberay/*.yaml`` are checked against the required fields and field names of the KubeRay
  ``ray.io/v1`` RayCluster / RayJob types (ray-operator/apis/ray/v1/*_types.go; no CRD schema is
  available offline), plus Kubernetes container basics (resources, env from secrets).
* The stage entrypoints in the RayJobs and in cluster/README.md parse with the real ``facepgn`` CLI
  and their ``--config``/``--set`` validate against the stage's config class, so docs and manifests
  cannot drift from the code.
* No credential is written in any file.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from facepgn.paths import REPO_ROOT

CLUSTER = REPO_ROOT / "cluster"
AWS_YAML = CLUSTER / "aws-gpu.yaml"
KUBERAY = CLUSTER / "kuberay"
STAGES = ("preprocess", "train", "tune", "infer")

# ---- Ray cluster launcher (ray up) -------------------------------------------------------------


def _ray_schema() -> dict:
    import ray.autoscaler

    with open(Path(ray.autoscaler.__file__).parent / "ray-schema.json") as f:
        return json.load(f)


def _launcher_validate(config: dict) -> dict:
    """What ``ray up`` does before it touches the cloud: schema, defaults, validation."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    jsonschema.validate(config, _ray_schema())
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def aws_config() -> dict:
    with open(AWS_YAML) as f:
        return yaml.safe_load(f)


def test_aws_yaml_passes_ray_launcher_validation(aws_config):
    prepared = _launcher_validate(aws_config)
    assert prepared["provider"]["type"] == "aws"
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head node should be CPU only"
    gpu_types = [t for name, t in types.items() if name != prepared["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "need an autoscaling GPU worker type"
    for t in gpu_types:
        assert t["min_workers"] == 0 < t["max_workers"], "GPU workers should scale from zero"


def test_ray_validation_rejects_broken_configs(aws_config):
    """The validator used above really validates (a typo or a fractional GPU fails)."""
    import jsonschema

    typo = copy.deepcopy(aws_config)
    typo["max_worker"] = typo.pop("max_workers")
    with pytest.raises(jsonschema.ValidationError):
        _launcher_validate(typo)
    frac = copy.deepcopy(aws_config)
    next(t for t in frac["available_node_types"].values() if "GPU" in t["resources"])["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        _launcher_validate(frac)


def test_aws_yaml_security_and_install(aws_config):
    head_cmds = " ".join(aws_config["head_start_ray_commands"])
    worker_cmds = " ".join(aws_config["worker_start_ray_commands"])
    # Jobs API / dashboard on localhost only (reached through `ray dashboard` SSH port-forward).
    assert "--dashboard-host=127.0.0.1" in head_cmds
    assert "0.0.0.0" not in head_cmds
    # Token auth on every node, the token copied from the user's machine, not written here.
    assert "RAY_AUTH_MODE=token ray start --head" in head_cmds
    assert "RAY_AUTH_MODE=token ray start --address" in worker_cmds
    # A worker process kept per fractional task slot (facepgn.cluster.worker_env), on every node.
    assert "RAY_num_workers_soft_limit=$((4 * $(nproc)))" in head_cmds
    assert "RAY_num_workers_soft_limit=$((4 * $(nproc)))" in worker_cmds
    assert aws_config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    # The project is installed on every node from the synced repo.
    assert aws_config["file_mounts"].get("~/facepgn") == "."
    assert any("pip install" in c and "~/facepgn" in c for c in aws_config["setup_commands"])
    assert any("**/.venv" == e for e in aws_config["rsync_exclude"])
    # The launcher opens no port but SSH unless told to: we add none.
    assert "IpPermissions" not in aws_config["provider"].get("security_group", {})


# ---- KubeRay manifests ------------------------------------------------------------------------

# Field names of the KubeRay ray.io/v1 types (union over KubeRay 1.1 - 1.5); a name outside these
# is a typo the API server would silently drop (or reject under strict field validation).
RAYCLUSTER_SPEC_FIELDS = {
    "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
    "headServiceAnnotations", "suspend", "gcsFaultToleranceOptions", "managedBy", "authOptions",
    "upgradeStrategy",
}
RAYCLUSTER_SPEC_REQUIRED = {"headGroupSpec"}
HEAD_GROUP_FIELDS = {"serviceType", "headService", "enableIngress", "rayStartParams", "template", "resources", "labels"}
HEAD_GROUP_REQUIRED = {"rayStartParams", "template"}
WORKER_GROUP_FIELDS = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams", "template",
    "scaleStrategy", "suspend", "idleTimeoutSeconds", "resources", "labels",
}
WORKER_GROUP_REQUIRED = {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"}
AUTOSCALER_OPTION_FIELDS = {
    "resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts", "securityContext",
    "idleTimeoutSeconds", "upscalingMode", "version",
}
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML",
    "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
    "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend", "schedule",
}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
SECRET_ENV_NAMES = {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN"}

_QUANTITY = re.compile(r"^([0-9.]+)(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
_FACTORS = {None: 1, "m": 1e-3, "k": 1e3, "Ki": 2**10, "M": 1e6, "Mi": 2**20, "G": 1e9, "Gi": 2**30, "T": 1e12, "Ti": 2**40}


def parse_quantity(value) -> float:
    """A Kubernetes resource quantity ("500m", "8Gi", 2) as a number."""
    m = _QUANTITY.match(str(value))
    assert m, f"not a Kubernetes quantity: {value!r}"
    return float(m.group(1)) * _FACTORS[m.group(2)]


def _kuberay_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    docs.append((path.name, doc))
    return docs


def _check_unknown(section: dict, allowed: set, where: str) -> None:
    unknown = set(section) - allowed
    assert not unknown, f"{where}: unknown fields {sorted(unknown)}"


def _check_required(section: dict, required: set, where: str) -> None:
    missing = required - set(section)
    assert not missing, f"{where}: missing required fields {sorted(missing)}"


def _check_container(c: dict, where: str, expect_gpu: bool | None = None) -> None:
    assert c.get("name") and c.get("image"), f"{where}: a container needs name and image"
    res = c.get("resources") or {}
    req, lim = res.get("requests") or {}, res.get("limits") or {}
    for key in ("cpu", "memory"):
        assert key in req and key in lim, f"{where}: resources.requests/limits.{key} missing"
        assert parse_quantity(req[key]) <= parse_quantity(lim[key]), f"{where}: {key} request > limit"
    gpus = lim.get("nvidia.com/gpu")
    if gpus is not None:
        assert isinstance(gpus, int) and gpus >= 1, f"{where}: nvidia.com/gpu must be a whole number"
        assert req.get("nvidia.com/gpu", gpus) == gpus, f"{where}: GPU request must equal the limit"
    if expect_gpu is not None:
        assert (gpus is not None) == expect_gpu, f"{where}: GPU limit {'missing' if expect_gpu else 'unexpected'}"
    env = {e["name"]: e for e in c.get("env") or []}
    for e in env.values():
        assert set(e) <= {"name", "value", "valueFrom"} and ("value" in e) != ("valueFrom" in e), f"{where}: bad env {e}"
    assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE=token missing"
    for name in SECRET_ENV_NAMES & set(env):
        assert "value" not in env[name], f"{where}: {name} has a literal value; use valueFrom.secretKeyRef"
        assert "secretKeyRef" in env[name]["valueFrom"], f"{where}: {name} must come from a Secret"
    assert "RAY_AUTH_TOKEN" in env, f"{where}: RAY_AUTH_TOKEN (from a Secret) missing"


def check_raycluster_spec(spec: dict, where: str) -> None:
    _check_unknown(spec, RAYCLUSTER_SPEC_FIELDS, where)
    _check_required(spec, RAYCLUSTER_SPEC_REQUIRED, where)
    _check_unknown(spec.get("autoscalerOptions") or {}, AUTOSCALER_OPTION_FIELDS, f"{where}.autoscalerOptions")
    head = spec["headGroupSpec"]
    _check_unknown(head, HEAD_GROUP_FIELDS, f"{where}.headGroupSpec")
    _check_required(head, HEAD_GROUP_REQUIRED, f"{where}.headGroupSpec")
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: the head Service must not be exposed"
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), f"{where}: rayStartParams values are strings"
    containers = head["template"]["spec"]["containers"]
    assert containers, f"{where}: head template has no containers"
    _check_container(containers[0], f"{where}.headGroupSpec", expect_gpu=False)
    names = set()
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        w = f"{where}.workerGroupSpecs[{i}]"
        _check_unknown(group, WORKER_GROUP_FIELDS, w)
        _check_required(group, WORKER_GROUP_REQUIRED, w)
        assert group["groupName"] not in names, f"{w}: duplicate groupName"
        names.add(group["groupName"])
        lo, hi, n = group["minReplicas"], group["maxReplicas"], group.get("replicas", 0)
        assert all(isinstance(x, int) for x in (lo, hi, n)), f"{w}: replica counts must be integers"
        assert 0 <= lo <= n <= hi and hi >= 1, f"{w}: need minReplicas <= replicas <= maxReplicas"
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), f"{w}: rayStartParams values are strings"
        wc = group["template"]["spec"]["containers"]
        assert wc, f"{w}: template has no containers"
        _check_container(wc[0], w, expect_gpu=group["groupName"].startswith("gpu"))
    if spec.get("enableInTreeAutoscaling"):
        auto_env = {e["name"]: e for e in (spec.get("autoscalerOptions") or {}).get("env") or []}
        assert auto_env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: the autoscaler needs RAY_AUTH_MODE"


def test_kuberay_manifests_parse_and_have_required_fields():
    docs = _kuberay_docs()
    kinds = [d["kind"] for _, d in docs]
    assert kinds.count("RayCluster") == 1
    assert sorted(d["metadata"]["name"] for _, d in docs if d["kind"] == "RayJob") == sorted(f"facepgn-{s}" for s in STAGES)
    for name, doc in docs:
        where = f"{name}:{doc['kind']}"
        assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}, f"{where}: unexpected top-level keys"
        assert doc.get("metadata", {}).get("name"), f"{where}: metadata.name missing"
        if doc["kind"] == "ServiceAccount":
            assert doc["apiVersion"] == "v1"
            assert "eks.amazonaws.com/role-arn" in doc["metadata"].get("annotations", {}), "IRSA annotation missing"
            continue
        assert doc["apiVersion"] == "ray.io/v1", f"{where}: apiVersion must be ray.io/v1"
        spec = doc["spec"]
        if doc["kind"] == "RayCluster":
            check_raycluster_spec(spec, where)
        elif doc["kind"] == "RayJob":
            _check_unknown(spec, RAYJOB_SPEC_FIELDS, where)
            assert spec.get("entrypoint"), f"{where}: spec.entrypoint missing"
            assert spec.get("submissionMode", "K8sJobMode") in SUBMISSION_MODES
            runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
            assert isinstance(runtime_env, dict) and runtime_env.get("working_dir"), f"{where}: runtimeEnvYAML"
            assert not SECRET_ENV_NAMES & set(runtime_env.get("env_vars") or {}), f"{where}: secrets in runtimeEnvYAML"
            assert "rayClusterSpec" in spec or "clusterSelector" in spec, f"{where}: no cluster"
            check_raycluster_spec(spec["rayClusterSpec"], f"{where}.rayClusterSpec")
            assert spec.get("shutdownAfterJobFinishes") is True, f"{where}: the job's cluster should go away after it"
            submitter = spec.get("submitterPodTemplate")
            if submitter:
                _check_container(submitter["spec"]["containers"][0], f"{where}.submitterPodTemplate")
        else:
            pytest.fail(f"{where}: unexpected kind")


def test_kuberay_checks_catch_mistakes():
    """The checks above fail on the mistakes they exist for."""
    _, cluster = next((n, d) for n, d in _kuberay_docs() if d["kind"] == "RayCluster")
    broken = copy.deepcopy(cluster["spec"])
    broken["workerGroupSpecs"][0].pop("groupName")
    with pytest.raises(AssertionError, match="groupName"):
        check_raycluster_spec(broken, "broken")
    leaked = copy.deepcopy(cluster["spec"])
    env = leaked["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    env.append({"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"})
    with pytest.raises(AssertionError, match="literal value"):
        check_raycluster_spec(leaked, "leaked")
    typo = copy.deepcopy(cluster["spec"])
    typo["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(AssertionError, match="unknown fields"):
        check_raycluster_spec(typo, "typo")


# ---- no credentials anywhere in cluster/ ------------------------------------------------------

_SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{20,}"),
    re.compile(r"(?i)(auth_token|RAY_AUTH_TOKEN)\s*[:=]\s*['\"]?[0-9a-f]{32,}"),
    re.compile(r"\b[0-9a-f]{64}\b"),  # a ray-generated token (token_hex(32))
]


def test_no_credentials_in_cluster_files():
    files = [p for p in CLUSTER.rglob("*") if p.is_file()]
    assert files
    for path in files:
        text = path.read_text()
        for pattern in _SECRET_PATTERNS:
            assert not pattern.search(text), f"{path}: looks like a credential ({pattern.pattern})"


# ---- the stage commands in manifests and docs match the real CLI and configs ------------------


def _stage_config_class(stage: str):
    from facepgn import config

    return {
        "preprocess": config.PreprocessConfig,
        "train": config.DistributedTrainConfig,
        "tune": config.TuneJobConfig,
        "infer": config.InferConfig,
    }[stage]


def check_stage_command(argv: list[str], where: str) -> None:
    """``python jobs/<stage>.py --config F --set k=v ...``: the job file exists, the CLI parses the
    arguments, and the config + overrides validate against the stage's config class."""
    from facepgn.cli import build_parser
    from facepgn.config import load_config

    assert argv[0] == "python" and argv[1].startswith("jobs/"), f"{where}: not a jobs/ entrypoint: {argv[:2]}"
    stage = Path(argv[1]).stem
    assert stage in STAGES, f"{where}: unknown stage {stage}"
    assert (REPO_ROOT / argv[1]).is_file(), f"{where}: {argv[1]} does not exist"
    args = build_parser().parse_args([stage, *argv[2:]])
    assert getattr(args, "handler", None), f"{where}: `facepgn {stage}` is not a command"
    config_path = REPO_ROOT / args.config if args.config else None
    if config_path is not None:
        assert config_path.is_file(), f"{where}: config {args.config} does not exist"
    if stage == "tune":  # the tune command resolves its `base` training file the same way
        from facepgn.train.tune import load_tune_config

        load_tune_config(str(config_path) if config_path else None, args.overrides)
    else:
        load_config(_stage_config_class(stage), config_path, args.overrides)


def _stage_missing(stage: str) -> bool:
    return not (REPO_ROOT / "jobs" / f"{stage}.py").exists() or not (REPO_ROOT / "facepgn/commands" / f"{stage}.py").exists()


def _check_all(commands: list[tuple[list[str], str]]) -> None:
    """Check every command whose stage exists; skip (after checking the rest) if some do not yet."""
    missing = set()
    for argv, where in commands:
        stage = Path(argv[1]).stem if len(argv) > 1 else ""
        if stage in STAGES and _stage_missing(stage):
            missing.add(stage)
            continue
        check_stage_command(argv, where)
    if missing:
        pytest.skip(f"stage commands not written yet: {sorted(missing)}")


def test_rayjob_entrypoints_match_cli_and_configs():
    _check_all([(shlex.split(d["spec"]["entrypoint"]), n) for n, d in _kuberay_docs() if d["kind"] == "RayJob"])


def _readme_job_commands() -> list[list[str]]:
    """The ``ray job submit ... -- python jobs/...`` commands in cluster/README.md."""
    text = (CLUSTER / "README.md").read_text()
    text = text.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if "ray job submit" in line and " -- python jobs/" in line:
            tail = line.split(" -- ", 1)[1]
            commands.append([a for a in shlex.split(tail) if not a.startswith("#")])
    return commands


def test_readme_job_commands_match_cli_and_configs():
    commands = _readme_job_commands()
    assert len(commands) >= 4, "cluster/README.md should show the stage submissions"
    assert {Path(c[1]).stem for c in commands} == set(STAGES)
    _check_all([(c, "cluster/README.md") for c in commands])


def test_stage_command_check_rejects_unknown_keys():
    if _stage_missing("train"):
        pytest.skip("facepgn train not written yet")
    from facepgn.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown key"):
        check_stage_command(["python", "jobs/train.py", "--set", "trainer.num_workerz=16"], "bad")


# ---- jobs/*.py stay thin: the same command locally and on a cluster ----------------------------


def test_job_entrypoints_are_thin_calls_of_the_cli():
    """Each ``jobs/<stage>.py`` is ``sys.exit(main(["<stage>", *sys.argv[1:]]))`` for a registered
    command: no logic of its own, so a submitted job runs exactly what ``facepgn <stage>`` runs."""
    import ast

    from facepgn.cli import command_names

    commands = command_names()
    files = sorted((REPO_ROOT / "jobs").glob("*.py"))
    assert files
    for path in files:
        tree = ast.parse(path.read_text())
        body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        imports = [n for n in body if isinstance(n, (ast.Import, ast.ImportFrom))]
        rest = [n for n in body if n not in imports]
        assert len(rest) == 1 and isinstance(rest[0], ast.If), f"{path.name}: only imports and the __main__ block"
        call = ast.unparse(rest[0].body[0]) if len(rest[0].body) == 1 else ""
        assert call == f"sys.exit(main(['{path.stem}', *sys.argv[1:]]))", f"{path.name}: {call!r}"
        assert path.stem in commands, f"{path.name}: `facepgn {path.stem}` is not a command"
