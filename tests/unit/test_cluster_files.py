"""Cluster definitions (cluster/) and jobs/submit.sh, checked without starting Ray.

The launcher YAML goes through Ray's own preparation and schema validation (what `ray up` runs before it
touches AWS); the KubeRay RayCluster goes through Ray's own reading of a RayCluster CR (what the in-tree
autoscaler derives from it). On top: token authentication in every place Ray starts, no token committed,
no public route to the dashboard/client/GCS ports, the recipes the cluster files name load, and the
submit script's behaviour with a stand-in `ray` CLI.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
LAUNCHER = CLUSTER / "launcher.yaml"
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob.yaml"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
SUBMIT = ROOT / "jobs" / "submit.sh"

PRIVATE_PORTS = (6379, 8265, 10001)  # GCS, dashboard/job API, Ray client
WORLD = {"0.0.0.0/0", "::/0"}
SECRET_NAME = "raylpclip-ray-token"
SECRET_KEY = "auth_token"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------- checkers (each also tested on bad input)

def public_rules_on_private_ports(rules: list[dict]) -> list[dict]:
    """Security-group ingress rules that open a Ray control port (6379/8265/10001) to the whole internet."""
    bad = []
    for rule in rules:
        world = {r.get("CidrIp") for r in rule.get("IpRanges", [])} | {
            r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])}
        if not world & WORLD:
            continue
        all_ports = str(rule.get("IpProtocol")) == "-1" or rule.get("FromPort", -1) == -1
        lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
        if all_ports or any(lo <= p <= hi for p in PRIVATE_PORTS):
            bad.append(rule)
    return bad


TOKEN_PATTERNS = [
    re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{32,}(?![0-9a-fA-F])"),  # Ray's tokens: secrets.token_hex(32)
    re.compile(r"RAY_AUTH_TOKEN\s*[=:]\s*['\"]?(?![$'\"{<\s])\S{8,}"),  # RAY_AUTH_TOKEN=<literal>
    re.compile(r"--from-literal=auth_token="),  # a token typed into a kubectl command
    re.compile(r"(?i)authorization:\s*bearer\s+(?![$<{])\S+"),
]


def token_findings(text: str) -> list[str]:
    """Literal tokens in a committed file's text (a reference to a variable, file or Secret is fine)."""
    found = [m.group(0) for pat in TOKEN_PATTERNS for m in pat.finditer(text)]
    for doc in _yaml_docs(text):
        if isinstance(doc, dict) and doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
            found.append(f"Secret {doc.get('metadata', {}).get('name')} with data")
    return found


def _yaml_docs(text: str) -> list:
    try:
        return list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        return []


def auth_env_problems(env: list[dict] | None, where: str) -> list[str]:
    """RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from our Secret (never a literal value) in one env list."""
    by_name = {e["name"]: e for e in env or []}
    problems = []
    if by_name.get("RAY_AUTH_MODE", {}).get("value") != "token":
        problems.append(f"{where}: RAY_AUTH_MODE is not 'token'")
    tok = by_name.get("RAY_AUTH_TOKEN", {})
    ref = tok.get("valueFrom", {}).get("secretKeyRef", {})
    if "value" in tok or ref != {"name": SECRET_NAME, "key": SECRET_KEY}:
        problems.append(f"{where}: RAY_AUTH_TOKEN does not come from Secret {SECRET_NAME}/{SECRET_KEY}")
    return problems


def cluster_spec_problems(spec: dict, where: str) -> list[str]:
    """What KubeRay requires of a RayCluster spec, plus token auth in every container and a private head."""
    problems = []
    head = spec.get("headGroupSpec", {})
    if not isinstance(head.get("rayStartParams"), dict):
        problems.append(f"{where}: headGroupSpec.rayStartParams missing")
    groups = [("head", head)] + [(g.get("groupName", "?"), g) for g in spec.get("workerGroupSpecs", [])]
    for name, group in groups:
        containers = group.get("template", {}).get("spec", {}).get("containers") or []
        if not containers or not all(c.get("image") for c in containers):
            problems.append(f"{where}/{name}: template.spec.containers with an image required")
        for c in containers:
            problems += auth_env_problems(c.get("env"), f"{where}/{name}/{c.get('name')}")
            if any("hostPort" in p for p in c.get("ports", [])):
                problems.append(f"{where}/{name}: hostPort exposes a Ray port on the node")
    for name, group in groups[1:]:
        for key in ("groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"):
            if key not in group:
                problems.append(f"{where}/{name}: workerGroupSpecs[].{key} missing")
        if not group.get("minReplicas", 0) <= group.get("replicas", 0) <= group.get("maxReplicas", 0):
            problems.append(f"{where}/{name}: needs minReplicas <= replicas <= maxReplicas")
    if spec.get("enableInTreeAutoscaling"):
        problems += auth_env_problems(spec.get("autoscalerOptions", {}).get("env"), f"{where}/autoscaler")
    if head.get("serviceType", "ClusterIP") != "ClusterIP" or head.get("enableIngress"):
        problems.append(f"{where}: head Service must stay ClusterIP without Ingress")
    svc_type = (head.get("headService") or {}).get("spec", {}).get("type", "ClusterIP")
    if svc_type != "ClusterIP":
        problems.append(f"{where}: headService type {svc_type} exposes the dashboard")
    return problems


def ray_start_commands_without_token(commands: list[str]) -> list[str]:
    """`ray start` commands that do not set RAY_AUTH_MODE=token in their own shell command."""
    return [c for c in commands if "ray start" in c
            and not re.search(r"(export\s+)?RAY_AUTH_MODE=token\s*;?\s*ray start", c)]


# ------------------------------------------------------------------------------------ the checkers bite

def test_checkers_flag_what_they_are_for():
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    open_dashboard = {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    all_v6 = {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
    wide_range = {"FromPort": 6000, "ToPort": 7000, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    vpn_only = {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "10.8.0.0/16"}]}
    ssh = {"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    assert public_rules_on_private_ports([open_dashboard, all_v6, wide_range, vpn_only, ssh]) == [
        open_dashboard, all_v6, wide_range]

    token = generate_new_authentication_token()  # Ray's own format
    assert token_findings(f"token: {token}\n")
    assert token_findings("export RAY_AUTH_TOKEN=s3cr3t-t0ken-value\n")
    assert token_findings("kubectl create secret generic t --from-literal=auth_token=abc\n")
    assert token_findings("apiVersion: v1\nkind: Secret\nmetadata: {name: t}\nstringData: {auth_token: x}\n")
    assert not token_findings("RAY_AUTH_TOKEN=$(cat ~/.ray/auth_token)\nRAY_AUTH_TOKEN: ${TOKEN}\n")

    assert auth_env_problems([{"name": "RAY_AUTH_MODE", "value": "token"},
                              {"name": "RAY_AUTH_TOKEN", "value": token}], "c")
    assert auth_env_problems([{"name": "RAY_AUTH_TOKEN", "valueFrom": {
        "secretKeyRef": {"name": SECRET_NAME, "key": SECRET_KEY}}}], "c")
    assert ray_start_commands_without_token(["ray stop", "ray start --head", "RAY_AUTH_MODE=disabled ray start"]) \
        == ["ray start --head", "RAY_AUTH_MODE=disabled ray start"]


# --------------------------------------------------------------------------------------- launcher YAML

@pytest.fixture(scope="module")
def launcher() -> dict:
    return load(LAUNCHER)


@pytest.fixture(scope="module")
def prepared(launcher) -> dict:
    """The config as `ray up` sees it after filling defaults and merging setup commands."""
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(launcher))


def test_launcher_passes_rays_own_schema_and_checks(prepared):
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    validate_config(prepared)  # ray-schema.json via jsonschema, then head type / min_workers checks
    broken = copy.deepcopy(prepared)
    broken["available_node_types"]["ray.worker.gpu"]["resources"] = {"GPU": "eight"}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


def test_launcher_node_types(launcher):
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] == "ray.head.default"
    assert types["ray.head.default"]["resources"] == {"CPU": 0}  # nothing scheduled on the head
    eight_gpu = {"p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge", "g5.48xlarge", "g6.48xlarge", "g6e.48xlarge"}
    assert types["ray.worker.gpu"]["node_config"]["InstanceType"] in eight_gpu
    ingest = types["ray.worker.ingest"]
    assert ingest["node_config"]["InstanceType"].split(".")[0][0] in "cmr"  # CPU-only families
    assert ingest["docker"]["worker_image"].endswith("-cpu")
    assert sum(t.get("max_workers", 0) for t in types.values()) <= launcher["max_workers"]


def test_launcher_turns_token_auth_on_everywhere_ray_starts(launcher, prepared):
    starts = prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]
    assert [c for c in starts if "ray start" in c], "no ray start command found"
    assert ray_start_commands_without_token(starts) == []
    assert "-e RAY_AUTH_MODE=token" in launcher["docker"]["run_options"]
    # The token reaches every node as the default token file, copied from the launching machine, not the repo.
    assert launcher["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    local = Path(os.path.expanduser(launcher["file_mounts"]["~/.ray/auth_token"])).resolve()
    assert ROOT not in local.parents


def test_launcher_installs_raylpclip_with_the_constraints(prepared):
    types = prepared["available_node_types"]
    per_type = {"head": prepared["head_setup_commands"]}
    for name, t in types.items():
        if name != prepared["head_node_type"]:
            per_type[name] = t.get("worker_setup_commands", prepared["worker_setup_commands"])
    for name, commands in per_type.items():
        installs = [c for c in commands if "pip install" in c and "raylpclip" in c]
        assert installs and all(re.search(r"-c \S*constraints\.txt", c) for c in installs), name
    mounts = prepared["file_mounts"]
    for needed in ("raylpclip", "pyproject.toml", "constraints.txt", "README.md"):
        assert mounts[f"~/raylpclip/{needed}"] == f"./{needed}" and (ROOT / needed).exists()


def test_launcher_keeps_ray_ports_off_the_internet(launcher, prepared):
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    extra = launcher["provider"].get("security_group", {}).get("IpPermissions", [])
    effective = _create_default_inbound_rules({"sg-cluster"}, extra)  # what Ray authorises on the group
    assert public_rules_on_private_ports(effective) == []
    public = [r for r in effective if {x["CidrIp"] for x in r.get("IpRanges", [])} & WORLD]
    assert [(r["FromPort"], r["ToPort"]) for r in public] == [(22, 22)]  # SSH for the launcher, nothing else
    for t in prepared["available_node_types"].values():
        assert "SecurityGroupIds" not in t["node_config"]  # the group above is the one in force
    assert "--dashboard-host=0.0.0.0" in " ".join(prepared["head_start_ray_commands"])


# ------------------------------------------------------------------------------------------- KubeRay

@pytest.fixture(scope="module")
def raycluster() -> dict:
    return load(RAYCLUSTER)


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return load(RAYJOB)


def test_raycluster_carries_what_kuberay_requires(raycluster):
    assert (raycluster["apiVersion"], raycluster["kind"], raycluster["metadata"]["name"]) == (
        "ray.io/v1", "RayCluster", "raylpclip")
    assert cluster_spec_problems(raycluster["spec"], "RayCluster") == []
    groups = {g["groupName"]: g for g in raycluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"gpu", "ingest"}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == gpu["requests"]["nvidia.com/gpu"] == "8"
    assert "nvidia.com/gpu" not in groups["ingest"]["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_raycluster_as_rays_autoscaler_reads_it(raycluster):
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    cr = copy.deepcopy(raycluster)
    cr["metadata"]["namespace"] = "default"  # given by kubectl at apply time
    types = _derive_autoscaling_config_from_ray_cr(cr)["available_node_types"]  # validates the result too
    assert types["headgroup"]["resources"]["CPU"] == 0
    assert (types["gpu"]["resources"]["GPU"], types["gpu"]["max_workers"]) == (8, 2)
    assert "GPU" not in types["ingest"]["resources"] and types["ingest"]["resources"]["CPU"] == 32


def test_rayjob_carries_what_kuberay_requires(rayjob, raycluster):
    assert (rayjob["apiVersion"], rayjob["kind"], rayjob["metadata"]["name"]) == (
        "ray.io/v1", "RayJob", "raylpclip-pretrain")
    spec = rayjob["spec"]
    assert cluster_spec_problems(spec["rayClusterSpec"], "RayJob") == []
    assert spec["rayClusterSpec"] == raycluster["spec"], "the RayJob's cluster drifted from raycluster.yaml"
    assert spec["shutdownAfterJobFinishes"] is True
    submitter = spec["submitterPodTemplate"]["spec"]
    assert submitter["restartPolicy"] == "Never"
    assert auth_env_problems(submitter["containers"][0]["env"], "submitter") == []
    # A plain `kubectl apply -f` must fail loudly: the placeholder is not a runtime env mapping.
    assert not isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)


def test_rayjob_entrypoint_runs_a_recipe_that_loads(rayjob):
    from raylpclip.config import PretrainConfig, load_config

    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-m", "raylpclip", "pretrain"]
    cfg = load_config(PretrainConfig, str(ROOT / argv[4]), argv[5:])
    assert cfg.data.train == "s3://my-bucket/laion-subset/{00000..01023}.tar"  # the quoted override survived
    assert cfg.train.use_gpu and cfg.ray.address == "auto"


def test_secret_name_matches_the_documented_create_command():
    command = re.search(r"kubectl create secret generic (\S+) --from-file=(\w+)=", RAYCLUSTER.read_text())
    assert command and command.groups() == (SECRET_NAME, SECRET_KEY)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")
def test_kustomize_fills_the_rayjob_runtime_env_from_the_one_file():
    out = subprocess.run(["kubectl", "kustomize", str(CLUSTER)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(out.stdout)}
    assert docs["RayJob"]["spec"]["runtimeEnvYAML"] == RUNTIME_ENV.read_text()
    assert cluster_spec_problems(docs["RayJob"]["spec"]["rayClusterSpec"], "rendered RayJob") == []


def test_kustomization_points_at_the_runtime_env_file():
    kz = load(CLUSTER / "kustomization.yaml")
    files = kz["configMapGenerator"][0]["files"]
    assert files == ["runtime_env=runtime_env.yaml"]
    (rep,) = kz["replacements"]
    assert rep["source"]["fieldPath"] == "data.runtime_env"
    assert rep["targets"][0]["fieldPaths"] == ["spec.runtimeEnvYAML"]


# ----------------------------------------------------------------------- shared by all definitions

def test_runtime_env_is_one_ray_accepts():
    from ray.runtime_env import RuntimeEnv

    env = load(RUNTIME_ENV)
    RuntimeEnv(**env)  # Ray's own field validation
    assert env["working_dir"] == "."
    assert {"auth_token", "*.token", ".venv/"} <= set(env["excludes"])


def test_images_run_the_ray_version_we_test(launcher, raycluster):
    import ray

    version = ray.__version__
    docker = launcher["docker"]
    images = [docker["image"], docker["head_image"], docker["worker_image"],
              launcher["available_node_types"]["ray.worker.ingest"]["docker"]["worker_image"]]
    assert all(i.startswith(f"rayproject/ray:{version}-py3") for i in images), images
    assert raycluster["spec"]["rayVersion"] == version
    assert f"ARG RAY_IMAGE=rayproject/ray:{version}-" in DOCKERFILE.read_text()
    assert re.search(r"pip install .*-c constraints\.txt", DOCKERFILE.read_text())


def test_no_token_is_committed_in_cluster_or_jobs():
    files = [p for d in (CLUSTER, ROOT / "jobs") for p in d.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    assert len(files) >= 8
    assert not [p for p in files if p.name == "auth_token" or p.suffix == ".token"]
    findings = {str(p.relative_to(ROOT)): f for p in files if (f := token_findings(p.read_text(errors="replace")))}
    assert findings == {}


def test_recipes_named_by_cluster_files_exist_and_load():
    from raylpclip.config import PretrainConfig, load_config

    named = set()
    for p in CLUSTER.rglob("*"):
        if p.is_file():
            named |= set(re.findall(r"\bjobs/[\w.-]+\.ya?ml\b", p.read_text(errors="replace")))
    assert "jobs/pretrain.yaml" in named
    for rel in sorted(named):
        assert (ROOT / rel).is_file(), rel
        load_config(PretrainConfig, str(ROOT / rel))


# ------------------------------------------------------------------------------------- jobs/submit.sh

@pytest.fixture
def fake_ray(tmp_path) -> Path:
    """A stand-in `ray` CLI that records its arguments, working directory and auth mode."""
    log = tmp_path / "ray-calls.txt"
    script = tmp_path / "ray"
    script.write_text(f'#!/usr/bin/env bash\n{{ echo "PWD=$PWD"; echo "MODE=$RAY_AUTH_MODE"; '
                      f'printf "ARG=%s\\n" "$@"; }} > {log}\n')
    script.chmod(0o755)
    return script


def run_submit(args: list[str], home: Path, fake: Path, **env) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "RAY": str(fake)}
    return subprocess.run(["bash", str(SUBMIT), *args], env={**base, **env}, cwd=home,
                          capture_output=True, text=True, timeout=30)


def calls(fake: Path) -> list[str]:
    log = fake.parent / "ray-calls.txt"
    return log.read_text().splitlines() if log.exists() else []


def test_submit_without_a_token_stops_with_a_clear_message(tmp_path, fake_ray):
    home = tmp_path / "home"
    home.mkdir()
    out = run_submit(["pretrain", "jobs/pretrain.yaml"], home, fake_ray)
    assert out.returncode == 2
    assert "no Ray auth token" in out.stderr and "RAY_AUTH_TOKEN" in out.stderr
    assert str(home / ".ray" / "auth_token") in out.stderr
    assert calls(fake_ray) == []  # nothing was submitted or uploaded

    empty = tmp_path / "empty.token"
    empty.write_text("")
    out = run_submit(["pretrain"], home, fake_ray, RAY_AUTH_TOKEN_PATH=str(empty))
    assert out.returncode == 2 and f"RAY_AUTH_TOKEN_PATH={empty} is missing or empty" in out.stderr
    assert calls(fake_ray) == []


def test_submit_builds_the_ray_job_submit_command(tmp_path, fake_ray):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("0" * 64)
    out = run_submit(["pretrain", "jobs/pretrain.yaml", "data.train=s3://b/{00000..00003}.tar"], home, fake_ray,
                     SUBMIT_FLAGS="--no-wait --submission-id psd-1")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # loopback address: no warning
    assert calls(fake_ray) == [
        f"PWD={ROOT}", "MODE=token",
        *[f"ARG={a}" for a in [
            "job", "submit", "--address", "http://127.0.0.1:8265", "--runtime-env", "cluster/runtime_env.yaml",
            "--working-dir", ".", "--no-wait", "--submission-id", "psd-1", "--",
            "python", "-m", "raylpclip", "pretrain", "jobs/pretrain.yaml", "data.train=s3://b/{00000..00003}.tar"]]]


def test_submit_checks_configs_and_warns_on_plain_http(tmp_path, fake_ray):
    home = tmp_path / "home"
    home.mkdir()
    out = run_submit(["pretrain", "jobs/no-such-recipe.yaml"], home, fake_ray, RAY_AUTH_TOKEN="t" * 64)
    assert out.returncode == 2 and "config not found: jobs/no-such-recipe.yaml" in out.stderr
    assert calls(fake_ray) == []

    out = run_submit(["pretrain", "jobs/pretrain.yaml"], home, fake_ray, RAY_AUTH_TOKEN="t" * 64,
                     RAY_ADDRESS="http://10.1.2.3:8265")
    assert out.returncode == 0 and "unencrypted to 10.1.2.3" in out.stderr
    assert "ARG=http://10.1.2.3:8265" in calls(fake_ray)
