"""The Kubernetes manifests and the container image: valid against the API schemas, and saying what we mean.

Schema validation (kubernetes-validate, offline, strict so unknown or misspelt fields
fail) covers field names and types only. The rules the API server adds on top (FailIndex
needs backoffLimitPerIndex, podFailurePolicy needs restartPolicy Never, …) and the
contract between the manifests and the CLI (exit codes, worker count, config options)
are checked explicitly below, since no cluster runs in CI.
"""

from __future__ import annotations

import re
import signal
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streamfilter import cli
from streamfilter.errors import UsageError
from streamfilter.spec import DEFAULT_GRACE_SECONDS, build_spec, load_config

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
#: 1.29 is the oldest release with backoffLimitPerIndex and FailIndex on by default; also the newest bundled.
K8S_VERSIONS = sorted({"1.29.0", kubernetes_validate.latest_version()})
MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "": 1}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def the(kind: str) -> dict[str, Any]:
    found = [doc for path in MANIFESTS for doc in documents(path) if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} under deploy/k8s/, found {len(found)}"
    return found[0]


def container(job: dict[str, Any]) -> dict[str, Any]:
    containers = job["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def flag(args: list[str], name: str) -> str:
    assert args.count(name) == 1, f"{name} should appear once in {args}"
    return args[args.index(name) + 1]


def mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i|[kMG])?", quantity).groups()  # type: ignore[union-attr]
    return float(number) * MEMORY_UNITS[unit or ""] / 2**20


def failure_action(job: dict[str, Any], exit_code: int, conditions: tuple[str, ...] = ()) -> str:
    """What the Job controller does with a failed pod: the first matching rule wins, else Count."""
    name = container(job)["name"]
    for rule in job["spec"]["podFailurePolicy"]["rules"]:
        if "onExitCodes" in rule:
            req = rule["onExitCodes"]
            if req.get("containerName", name) != name:
                continue
            if (exit_code in req["values"]) == (req["operator"] == "In"):
                return rule["action"]
        else:
            for pattern in rule["onPodConditions"]:
                if pattern["type"] in conditions and pattern.get("status", "True") == "True":
                    return rule["action"]
    return "Count"


def config_file(tmp_path: Path) -> Path:
    """The ConfigMap's job.toml, written where the test can point --config at it."""
    path = tmp_path / "job.toml"
    path.write_text(the("ConfigMap")["data"]["job.toml"], encoding="utf-8")
    return path


def test_there_are_a_job_a_configmap_and_an_example_secret() -> None:
    kinds = sorted(doc["kind"] for path in MANIFESTS for doc in documents(path))
    assert kinds == ["ConfigMap", "Job", "Secret"]
    assert (K8S / "secret.example.yaml").exists()


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_the_kubernetes_schema(path: Path, version: str) -> None:
    for doc in documents(path):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name}: {doc['kind']} invalid for Kubernetes {exc.version} at {where}: {exc.message}")


def test_strict_validation_refuses_a_misspelt_field() -> None:
    job = the("Job")
    job["spec"]["backofLimitPerIndex"] = 3
    with pytest.raises(kubernetes_validate.ValidationError, match="backofLimitPerIndex"):
        kubernetes_validate.validate(job, K8S_VERSIONS[0], strict=True)


def test_job_is_indexed_with_per_index_retries() -> None:
    spec = the("Job")["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] >= 1 and 1 <= spec["parallelism"] <= spec["completions"]
    assert spec["backoffLimitPerIndex"] >= 1
    # The API server refuses maxFailedIndexes above completions or without backoffLimitPerIndex.
    assert 0 <= spec["maxFailedIndexes"] <= spec["completions"]
    # Unset, it defaults to unlimited with backoffLimitPerIndex; a number would cap all indexes together.
    assert "backoffLimit" not in spec
    # With a podFailurePolicy the only allowed value; no second attempt of an index while one still runs.
    assert spec.get("podReplacementPolicy", "Failed") == "Failed"


def test_pod_failure_policy_follows_the_cli_exit_codes() -> None:
    job = the("Job")
    spec = job["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # required by podFailurePolicy and per-index limits
    for rule in spec["podFailurePolicy"]["rules"]:
        assert ("onExitCodes" in rule) != ("onPodConditions" in rule), "one requirement per rule"
        if "onExitCodes" in rule:
            values = rule["onExitCodes"]["values"]
            assert values == sorted(set(values)), "the API server wants exit codes sorted and unique"
            assert rule["onExitCodes"]["operator"] == "NotIn" or 0 not in values
            assert rule["onExitCodes"].get("containerName", container(job)["name"]) == container(job)["name"]
        if rule["action"] == "FailIndex":
            assert "backoffLimitPerIndex" in spec

    sigterm = 128 + signal.SIGTERM
    assert UsageError.exit_code == 2
    assert failure_action(job, UsageError.exit_code) == "FailIndex"  # config error: nothing written, retry is futile
    assert failure_action(job, 1) == "Count"  # a shard failed: retry, receipts skip what is done
    assert failure_action(job, sigterm) == "Count"  # stopped by SIGTERM: retry
    assert failure_action(job, 137) == "Count"  # OOM-killed: retry (and raise the limit)
    assert failure_action(job, sigterm, ("DisruptionTarget",)) == "Ignore"  # evicted: not the job's fault


def test_container_runs_the_entrypoint_with_one_worker_per_completion() -> None:
    job = the("Job")
    c = container(job)
    assert "command" not in c, "the image's entrypoint is `streamfilter`; args start at the subcommand"
    args = [str(a) for a in c["args"]]
    assert args[0] == "run"
    assert int(flag(args, "--num-workers")) == job["spec"]["completions"]
    # The index comes from JOB_COMPLETION_INDEX, different in every pod; a fixed one would repeat one share.
    assert "--worker-index" not in args


def test_config_is_mounted_where_the_args_point() -> None:
    job = the("Job")
    c = container(job)
    config_path = Path(flag([str(a) for a in c["args"]], "--config"))
    (mount,) = [m for m in c["volumeMounts"] if Path(m["mountPath"]) == config_path.parent]
    assert mount.get("readOnly") is True and "subPath" not in mount
    (volume,) = [v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    configmap = the("ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    items = {item["path"]: item["key"] for item in volume["configMap"].get("items", [])}
    assert items.get(config_path.name, config_path.name) in configmap["data"]


def test_pod_runs_as_the_image_user_without_privileges() -> None:
    job = the("Job")
    pod = job["spec"]["template"]["spec"]
    c = container(job)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod.get("automountServiceAccountToken") is False
    (tmp,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume

    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    user, uid = re.search(r"useradd\b.*--uid\s+(\d+)\s+(\S+)", dockerfile).group(2, 1)  # type: ignore[union-attr]
    assert re.search(rf"^USER\s+{re.escape(user)}\s*$", dockerfile, re.MULTILINE)
    assert pod["securityContext"]["runAsUser"] == int(uid) == 10001


def test_resources_cover_the_measured_peak() -> None:
    resources = container(the("Job"))["resources"]
    # The benchmark's peak RSS was 355 MiB through S3 at concurrency 2 (578 MiB at 3 before jemalloc).
    assert mebibytes(resources["requests"]["memory"]) >= 600
    assert mebibytes(resources["limits"]["memory"]) >= mebibytes(resources["requests"]["memory"])
    assert float(resources["requests"]["cpu"]) >= 2
    options = tomllib.loads(the("ConfigMap")["data"]["job.toml"])
    assert options.get("concurrency", 3) <= 3, "memory is sized for 3 shards in flight; raise it with concurrency"


def test_grace_period_outlasts_the_cli_grace(tmp_path: Path) -> None:
    grace = build_spec(load_config(str(config_file(tmp_path)))).grace_seconds
    assert grace == DEFAULT_GRACE_SECONDS
    # Time to commit in flight, then to abort the rest and exit, before SIGKILL.
    assert the("Job")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= grace + 15


def test_configmap_toml_is_a_valid_job_for_every_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = the("ConfigMap")["data"]["job.toml"]
    options = tomllib.loads(text)
    reference = tomllib.loads((ROOT / "configs" / "relaion-removal.toml").read_text(encoding="utf-8"))
    # The same job as configs/relaion-removal.toml, minus what must differ per worker or stays out of a ConfigMap.
    assert {k: v for k, v in reference.items() if k != "report"} == options
    for name in ("report", "num_workers", "worker_index"):
        assert name not in load_config(str(config_file(tmp_path))), f"{name} does not belong in the shared config"

    spec = build_spec(load_config(str(config_file(tmp_path))))
    assert spec.inputs and spec.output and spec.blocklists
    assert spec.output.startswith("s3://") and spec.report is None

    # As each pod parses it: the container's args, with the index Kubernetes gives each pod.
    job = the("Job")
    args = [str(a) for a in container(job)["args"]]
    args[args.index("--config") + 1] = str(config_file(tmp_path))
    seen = set()
    for index in range(job["spec"]["completions"]):
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))
        spec = build_spec(cli._options(cli._parser().parse_args(args)))
        assert spec.num_workers == job["spec"]["completions"]
        seen.add(spec.worker_index)
    assert seen == set(range(job["spec"]["completions"]))


def test_credentials_come_from_the_secret_and_the_example_holds_placeholders() -> None:
    secret = the("Secret")
    env = {e["name"]: e for e in container(the("Job"))["env"]}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] == name
        assert "value" not in env[name]
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert not env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"].get("optional", False)
    endpoint = env["AWS_ENDPOINT_URL"]["valueFrom"]["configMapKeyRef"]
    assert endpoint["name"] == the("ConfigMap")["metadata"]["name"] and endpoint["optional"] is True

    values = {**secret.get("stringData", {}), **secret.get("data", {})}
    assert set(values) >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for name, value in values.items():
        assert value.startswith("PLACEHOLDER"), f"{name} in secret.example.yaml must be a placeholder"
    text = (K8S / "secret.example.yaml").read_text(encoding="utf-8")
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), "looks like a real AWS access key id"
    for path in MANIFESTS:
        if path.name != "secret.example.yaml":
            assert "AWS_SECRET_ACCESS_KEY:" not in path.read_text(encoding="utf-8")


def test_image_installs_only_through_the_script_ci_runs() -> None:
    lines = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ").splitlines()
    runs = [line.split(None, 1)[1] for line in lines if line.split(None, 1)[:1] == ["RUN"]]
    installs = [run for run in runs if re.search(r"\b(pip|apt-get|apt|apk|conda|uv|install)\b|install\.sh", run)]
    assert len(installs) == 1 and re.fullmatch(r"bash deploy/install\.sh \S+( && rm -rf \S+)?", installs[0]), installs
    assert re.search(r"^ENTRYPOINT\s+\[\"streamfilter\"\]\s*$", "\n".join(lines), re.MULTILINE)
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if not line.lstrip().startswith("#")]
    assert any(re.search(r"\bbash deploy/install\.sh\b", line) for line in ci)


# --- streamfilter diff as three Jobs, one per phase ------------------------------------------------

DIFF_MANIFESTS = sorted((K8S / "diff").glob("*.yaml"))


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", DIFF_MANIFESTS, ids=lambda p: p.name)
def test_diff_manifests_match_the_kubernetes_schema(path: Path, version: str) -> None:
    for doc in documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_diff_jobs_run_the_three_phases_with_one_worker_per_completion(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamfilter.cli import _options, _parser
    from streamfilter.diff import build_diff_spec

    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    specs = {}
    for path in DIFF_MANIFESTS:
        (job,) = documents(path)
        args = [str(a) for a in container(job)["args"]]
        assert args[0] == "diff" and "--worker-index" not in args
        phase = flag(args, "--phase")
        assert path.stem == phase
        if phase == "merge":  # one pod: the list is written once
            assert job["spec"]["completions"] == 1 and "--num-workers" not in args
        else:
            assert job["spec"]["completionMode"] == "Indexed"
            assert int(flag(args, "--num-workers")) == job["spec"]["completions"]
        rules = job["spec"]["podFailurePolicy"]["rules"]
        assert any(r.get("onExitCodes", {}).get("values") == [2] for r in rules), "exit 2 (phase not ready) is final"
        specs[phase] = build_diff_spec(_options(_parser().parse_args(args)))
    assert sorted(specs) == ["merge", "partition", "resolve"]

    # The three phases must agree on everything but the phase and the workers, or markers would not match.
    def same(spec):
        return (spec.reference, spec.derivative, spec.spill, spec.out, spec.memory_budget, spec.partitions)

    assert same(specs["partition"]) == same(specs["resolve"]) == same(specs["merge"])
