"""The Kubernetes manifests: schema-valid, hardened, admitted where they claim, wired consistently.

Core objects are validated offline against the upstream OpenAPI schemas bundled by
`kubernetes-validate`; prometheus-operator objects (whose CRD schemas are not bundled) are checked
for the fields and cross-references that matter: selectors that select, ports that exist.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from agent.cli import build_parser
from agent.config import load_settings, split_listen

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
MONITORING_GROUP = "monitoring.coreos.com/v1"
DURATION = re.compile(r"^(\d+(ms|s|m|h))+$")

# Oldest Kubernetes each overlay needs: native sidecars are on by default from 1.29, DRA's
# resource.k8s.io/v1 from 1.34. Each is also checked against the newest bundled schema.
MIN_VERSION = {"sidecar": "1.29", "sidecar-dra": "1.34", "daemonset": "1.29"}


def pod_templates(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload."""
    for obj in objects:
        if obj.get("kind") in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


def pod_labels(objects: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [
        o["spec"]["template"]["metadata"].get("labels", {})
        for o in objects
        if o.get("kind") in ("Deployment", "DaemonSet", "StatefulSet")
    ]


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """MatchLabels semantics (the only form these manifests use)."""
    assert set(selector) <= {"matchLabels"}, f"unsupported selector {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def tokenergy_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in all_containers(pod) if c["image"].split(":")[0].endswith("tokenergy")]


# -- Pod Security Standards ----------------------------------------------------------------------

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip


def pss_violations(pod: dict[str, Any]) -> list[str]:
    """The Pod Security Standards rules a pod spec breaks, as "level: rule" strings.

    Implements the baseline and restricted controls of
    https://kubernetes.io/docs/concepts/security/pod-security-standards/ that a pod spec can
    break (Linux pods; AppArmor/SELinux/sysctls are not used by these manifests and are refused).
    """
    out: list[str] = []
    psc = pod.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            out.append(f"baseline: {field}")
    for field in ("seLinuxOptions", "sysctls", "appArmorProfile", "windowsOptions"):
        if field in psc:
            out.append(f"baseline: pod securityContext.{field} (not checked here)")
    for volume in pod.get("volumes", []):
        kind = next(k for k in volume if k != "name")
        if kind == "hostPath":
            out.append(f"baseline: hostPath volume {volume['name']}")
        elif kind not in RESTRICTED_VOLUMES:
            out.append(f"restricted: volume type {kind}")
    pod_non_root = psc.get("runAsNonRoot") is True
    pod_seccomp = psc.get("seccompProfile", {}).get("type")
    if psc.get("runAsUser") == 0:
        out.append("restricted: pod runAsUser 0")
    if pod_seccomp == "Unconfined":
        out.append("baseline: pod seccomp Unconfined")
    for c in all_containers(pod):
        name, sc = c["name"], c.get("securityContext", {})
        caps = sc.get("capabilities", {})
        if sc.get("privileged"):
            out.append(f"baseline: {name} privileged")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"baseline: {name} hostPort")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"baseline: {name} procMount")
        if set(caps.get("add", [])) - BASELINE_CAPABILITIES:
            out.append(f"baseline: {name} adds capabilities")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"restricted: {name} adds capabilities")
        if "ALL" not in caps.get("drop", []):
            out.append(f"restricted: {name} does not drop ALL capabilities")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"restricted: {name} allowPrivilegeEscalation not false")
        non_root = sc.get("runAsNonRoot", pod_non_root)
        if non_root is not True:
            out.append(f"restricted: {name} runAsNonRoot not true")
        if sc.get("runAsUser") == 0:
            out.append(f"restricted: {name} runAsUser 0")
        seccomp = sc.get("seccompProfile", {}).get("type", pod_seccomp)
        if seccomp == "Unconfined":
            out.append(f"baseline: {name} seccomp Unconfined")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"restricted: {name} seccomp not RuntimeDefault/Localhost")
    return out


HARDENED_CONTAINER: dict[str, Any] = {
    "name": "c",
    "image": "x",
    "securityContext": {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    },
}


def _with(pod: dict[str, Any] | None = None, **container_sc: Any) -> dict[str, Any]:
    container = {**HARDENED_CONTAINER}
    container["securityContext"] = {**HARDENED_CONTAINER["securityContext"], **container_sc}
    container["securityContext"] = {
        k: v for k, v in container["securityContext"].items() if v is not None
    }
    return {"containers": [container], **(pod or {})}


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (_with(), []),
        (_with({"hostPID": True}), ["baseline: hostPID"]),
        (_with({"hostNetwork": True}), ["baseline: hostNetwork"]),
        (_with(privileged=True), ["baseline: c privileged"]),
        (
            _with(allowPrivilegeEscalation=None),
            ["restricted: c allowPrivilegeEscalation not false"],
        ),
        (_with(runAsNonRoot=None), ["restricted: c runAsNonRoot not true"]),
        (
            _with({"securityContext": {"runAsNonRoot": True}}, runAsNonRoot=None),
            [],
        ),
        (
            _with(capabilities={"drop": ["NET_RAW"]}),
            ["restricted: c does not drop ALL capabilities"],
        ),
        (
            _with(capabilities={"drop": ["ALL"], "add": ["SYS_ADMIN"]}),
            ["baseline: c adds capabilities", "restricted: c adds capabilities"],
        ),
        (
            _with(seccompProfile={"type": "Unconfined"}),
            [
                "baseline: c seccomp Unconfined",
                "restricted: c seccomp not RuntimeDefault/Localhost",
            ],
        ),
        (
            _with({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}),
            ["baseline: hostPath volume h"],
        ),
    ],
)
def test_pss_checker_flags_each_rule(pod: dict[str, Any], expected: list[str]) -> None:
    """The checker itself: a clean pod passes, each single breach is named."""
    assert pss_violations(pod) == expected


# -- schemas -------------------------------------------------------------------------------------


def _validate_core(obj: dict[str, Any], version: str) -> None:
    if obj["apiVersion"].startswith("monitoring.coreos.com/"):
        return  # CRD schemas are not bundled: checked structurally below
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path)
        pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} @ {version}: {where}: {exc.message}")


@pytest.mark.parametrize("overlay", sorted(MIN_VERSION))
def test_rendered_objects_match_kubernetes_schemas(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """Strict validation (unknown fields are errors) at the oldest supported and newest version."""
    latest = kubernetes_validate.latest_version()
    for obj in rendered[overlay]:
        for version in (MIN_VERSION[overlay], latest):
            _validate_core(obj, version)


def raw_manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(KUBERNETES.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((str(path.relative_to(ROOT)), doc))
    return found


@pytest.mark.parametrize(
    ("path", "obj"), raw_manifests(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_manifest_file_is_a_valid_object(path: str, obj: dict[str, Any]) -> None:
    """Each file validates on its own too, without kustomize (DRA objects need 1.34)."""
    version = "1.34" if obj["apiVersion"].startswith("resource.k8s.io/") else "1.29"
    _validate_core(obj, version)


def test_schema_validation_rejects_a_typo() -> None:
    """The validator is strict: a misspelt field fails (so the passes above mean something)."""
    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 1, "targetPrt": 1}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.29", strict=True)


# -- hardening -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", sorted(MIN_VERSION))
def test_every_container_is_hardened(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """runAsNonRoot, read-only root, no capabilities, no escalation, seccomp, no SA token."""
    templates = list(pod_templates(rendered[overlay]))
    assert templates
    for workload, pod in templates:
        assert pod.get("automountServiceAccountToken") is False, workload
        psc = pod.get("securityContext", {})
        for c in all_containers(pod):
            sc = c.get("securityContext", {})
            where = f"{workload}/{c['name']}"
            assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            assert not sc.get("privileged"), where
            seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            assert c.get("resources", {}).get("limits", {}).get("memory"), f"{where}: memory limit"


@pytest.mark.parametrize("overlay", ["sidecar", "sidecar-dra"])
def test_sidecar_pods_are_admitted_under_restricted(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """The vLLM pod with the sidecar meets PSS "restricted", and its namespace enforces it."""
    for workload, pod in pod_templates(rendered[overlay]):
        assert pss_violations(pod) == [], workload
    (namespace,) = by_kind(rendered[overlay], "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_daemonset_breaks_only_baseline_hostpid(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """HostPID is the one exception, and its namespace allows privileged pods (nothing wider)."""
    (daemonset,) = by_kind(rendered["daemonset"], "DaemonSet")
    assert pss_violations(daemonset["spec"]["template"]["spec"]) == ["baseline: hostPID"]
    (namespace,) = by_kind(rendered["daemonset"], "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert (
        "hostPID"
        in (KUBERNETES / "base/daemonset/daemonset.yaml").read_text().split("apiVersion")[0]
    ), "the DaemonSet's header comment must explain the hostPID exception"


# -- GPU visibility ------------------------------------------------------------------------------


def _gpu_requests(container: dict[str, Any]) -> str | None:
    resources = container.get("resources", {})
    limits = resources.get("limits", {})
    requests = resources.get("requests", {})
    value = limits.get("nvidia.com/gpu", requests.get("nvidia.com/gpu"))
    return None if value is None else str(value)


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def _deployment_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(objects, "Deployment")
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def test_sidecar_is_native_and_requests_no_gpu(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Native sidecar, shared PID namespace, no extra GPU, NVML-only capabilities."""
    for overlay in ("sidecar", "sidecar-dra"):
        pod = _deployment_pod(rendered[overlay])
        (agent,) = pod["initContainers"]
        assert agent["restartPolicy"] == "Always"
        assert pod["shareProcessNamespace"] is True
        assert not pod.get("hostPID"), "hostPID cannot be combined with shareProcessNamespace"
        assert _gpu_requests(agent) is None
        assert _env(agent)["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
        # One UID for both containers, so the agent may read vLLM's /proc entries.
        assert pod["securityContext"]["runAsUser"] > 0
        assert all("runAsUser" not in c.get("securityContext", {}) for c in all_containers(pod))


def test_env_overlay_shows_all_gpus_to_the_sidecar_only(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    pod = _deployment_pod(rendered["sidecar"])
    (agent,) = pod["initContainers"]
    (vllm,) = pod["containers"]
    assert _env(agent)["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert "NVIDIA_VISIBLE_DEVICES" not in _env(vllm), "the device plugin sets vLLM's"
    assert _gpu_requests(vllm) == "1"
    assert pod["runtimeClassName"] == "nvidia"


def test_dra_overlay_shares_one_claim_between_vllm_and_the_sidecar(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["sidecar-dra"]
    pod = _deployment_pod(objects)
    (claim_ref,) = pod["resourceClaims"]
    (template,) = by_kind(objects, "ResourceClaimTemplate")
    assert claim_ref["resourceClaimTemplateName"] == template["metadata"]["name"]
    names = {c["name"]: c for c in all_containers(pod)}
    assert set(names) == {"tokenergy", "vllm"}
    for container in names.values():
        assert container["resources"]["claims"] == [{"name": claim_ref["name"]}]
        assert _gpu_requests(container) is None
        assert "NVIDIA_VISIBLE_DEVICES" not in _env(container)


def test_daemonset_sees_every_gpu_without_taking_one(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    (daemonset,) = by_kind(rendered["daemonset"], "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    assert pod["hostPID"] is True
    assert pod["runtimeClassName"] == "nvidia"
    assert _gpu_requests(agent) is None
    assert _env(agent)["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert _env(agent)["NVIDIA_DRIVER_CAPABILITIES"] == "utility"


# -- the agent's command line, config and probes -------------------------------------------------


def _entrypoint_command() -> list[str]:
    """The image's ENTRYPOINT after the program name (["run"])."""
    dockerfile = (ROOT / "deploy/docker/Dockerfile").read_text()
    match = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", dockerfile, re.MULTILINE)
    assert match, "Dockerfile has no exec-form ENTRYPOINT"
    entry: list[str] = yaml.safe_load(match.group(1))
    assert entry[0] == "tokenergy"
    return entry[1:]


def _config_files() -> dict[str, Path]:
    """ConfigMapGenerator name -> the TOML file it packs as config.toml."""
    found: dict[str, Path] = {}
    for kustomization in KUBERNETES.rglob("kustomization.yaml"):
        for gen in yaml.safe_load(kustomization.read_text()).get("configMapGenerator", []):
            for entry in gen.get("files", []):
                key, _, source = entry.partition("=")
                assert key == "config.toml", f"{kustomization}: the agent reads config.toml"
                found[gen["name"]] = kustomization.parent / source
    return found


def test_generated_configs_validate() -> None:
    configs = _config_files()
    assert set(configs) == {"tokenergy-sidecar-config", "tokenergy-node-config"}
    for path in configs.values():
        load_settings(path, use_env=False)


@pytest.mark.parametrize("overlay", sorted(MIN_VERSION))
def test_agent_args_config_mount_and_ports_agree(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """The agent's args, config mount and ports agree.

    The args parse with the real CLI; --config lands in the mounted ConfigMap; the port the
    config listens on is the container port the probes and monitors use.
    """
    configs = _config_files()
    for workload, pod in pod_templates(rendered[overlay]):
        for agent in tokenergy_containers(pod):
            args = build_parser().parse_args([*_entrypoint_command(), *agent.get("args", [])])
            assert args.command == "run"
            config_dir = str(Path(args.config).parent)
            (mount,) = [m for m in agent["volumeMounts"] if m["mountPath"] == config_dir]
            (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
            generated = volume["configMap"]["name"]
            source = next(p for name, p in configs.items() if generated.startswith(name + "-"))
            settings = load_settings(source, use_env=False)
            _, port = split_listen(settings.http.listen)
            ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
            assert ports == {"tokenergy": port}, workload
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                get = agent[probe]["httpGet"]
                assert (get["path"], get["port"]) == ("/healthz", "tokenergy"), probe


def test_sidecar_scrapes_vllm_on_localhost(rendered: dict[str, list[dict[str, Any]]]) -> None:
    settings = load_settings(_config_files()["tokenergy-sidecar-config"], use_env=False)
    (server,) = settings.servers
    pod = _deployment_pod(rendered["sidecar"])
    (vllm,) = pod["containers"]
    vllm_port = {p["name"]: p["containerPort"] for p in vllm["ports"]}["http"]
    assert server.url == f"http://127.0.0.1:{vllm_port}/metrics"
    assert server.gpus is None, "sidecar mode: every GPU the container sees"
    assert f"--port={vllm_port}" in vllm["args"]


def test_image_tag_is_the_project_version(rendered: dict[str, list[dict[str, Any]]]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for objects in rendered.values():
        for _, pod in pod_templates(objects):
            for agent in tokenergy_containers(pod):
                assert agent["image"] == f"tokenergy:{version}"


# -- prometheus-operator objects -----------------------------------------------------------------

PODMONITOR_ENDPOINT_KEYS = {"port", "path", "interval", "scrapeTimeout", "honorLabels"}
SERVICEMONITOR_ENDPOINT_KEYS = PODMONITOR_ENDPOINT_KEYS | {"relabelings"}


def _check_endpoint(endpoint: dict[str, Any], allowed: set[str]) -> None:
    assert set(endpoint) <= allowed, f"unexpected endpoint fields {set(endpoint) - allowed}"
    assert endpoint["path"] == "/metrics"
    for field in ("interval", "scrapeTimeout"):
        assert DURATION.match(endpoint[field]), endpoint[field]
    seconds = {f: int(re.sub(r"\D", "", endpoint[f])) for f in ("interval", "scrapeTimeout")}
    assert endpoint["interval"].endswith("s") and endpoint["scrapeTimeout"].endswith("s")
    assert seconds["scrapeTimeout"] <= seconds["interval"], "scrapeTimeout must be <= interval"
    assert endpoint["honorLabels"] is False


def _agent_absent_job_regex() -> str | None:
    rules = yaml.safe_load((ROOT / "dashboards/prometheus/rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            match = re.search(r'up\{job=~"([^"]+)"\}', str(rule.get("expr", "")))
            if match and rule.get("alert"):
                return match.group(1)
    return None


def test_podmonitor_selects_the_sidecar_port(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in ("sidecar", "sidecar-dra"):
        objects = rendered[overlay]
        (monitor,) = by_kind(objects, "PodMonitor")
        assert monitor["apiVersion"] == MONITORING_GROUP
        assert set(monitor["spec"]) == {"selector", "podMetricsEndpoints"}
        selected = [
            labels for labels in pod_labels(objects) if selects(monitor["spec"]["selector"], labels)
        ]
        assert len(selected) == 1, "the PodMonitor must select the vLLM pods"
        ports = {p["name"] for c in all_containers(_deployment_pod(objects)) for p in c["ports"]}
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        _check_endpoint(endpoint, PODMONITOR_ENDPOINT_KEYS)
        assert endpoint["port"] in ports


def test_servicemonitor_selects_the_daemonset_through_its_service(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["daemonset"]
    (monitor,) = by_kind(objects, "ServiceMonitor")
    (service,) = [
        s
        for s in by_kind(objects, "Service")
        if selects(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    (daemonset,) = by_kind(objects, "DaemonSet")
    pod_labels_ = daemonset["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels_.get(k) == v for k, v in service["spec"]["selector"].items())
    (endpoint,) = monitor["spec"]["endpoints"]
    _check_endpoint(endpoint, SERVICEMONITOR_ENDPOINT_KEYS)
    (service_port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    container_ports = {
        p["name"] for p in daemonset["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert service_port["targetPort"] in container_ports


def test_scrape_jobs_are_the_ones_the_absent_alert_watches(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """PodMonitor jobs are "<namespace>/<name>", ServiceMonitor jobs the Service's name."""
    regex = _agent_absent_job_regex()
    if regex is None:
        pytest.skip("no up{job=~...} alert in dashboards/prometheus/rules.yml")
    for overlay in ("sidecar", "sidecar-dra"):
        (monitor,) = by_kind(rendered[overlay], "PodMonitor")
        job = f"{monitor['metadata']['namespace']}/{monitor['metadata']['name']}"
        assert re.fullmatch(regex, job), f"{job} !~ {regex}"
    (monitor,) = by_kind(rendered["daemonset"], "ServiceMonitor")
    assert "jobLabel" not in monitor["spec"]
    (service,) = [s for s in by_kind(rendered["daemonset"], "Service")]
    assert re.fullmatch(regex, service["metadata"]["name"])


def test_monitors_and_rules_carry_the_kube_prometheus_stack_release_label(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for objects in rendered.values():
        crs = [o for o in objects if o["apiVersion"] == MONITORING_GROUP]
        assert {o["kind"] for o in crs} >= {"PrometheusRule"}
        for obj in crs:
            assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_prometheusrule_spec_is_the_rule_file(rendered: dict[str, list[dict[str, Any]]]) -> None:
    rules = yaml.safe_load((ROOT / "dashboards/prometheus/rules.yml").read_text())
    for objects in rendered.values():
        (rule,) = by_kind(objects, "PrometheusRule")
        assert rule["spec"] == rules


def test_prometheusrule_passes_promtool(tmp_path: Path) -> None:
    promtool = _which("promtool")
    spec = yaml.safe_load((KUBERNETES / "base/monitoring/prometheusrule.yaml").read_text())["spec"]
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_configmaps_are_labelled_and_small_enough(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The Grafana sidecar's label, and under 256 KiB so client-side `kubectl apply` works."""
    dashboards = sorted((ROOT / "dashboards/grafana").glob("*.json"))
    for objects in rendered.values():
        maps = [
            o
            for o in by_kind(objects, "ConfigMap")
            if "grafana_dashboard" in o["metadata"]["labels"]
        ]
        assert len(maps) == len(dashboards)
        for configmap in maps:
            assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
            assert len(configmap["data"]) == 1
            assert len(yaml.safe_dump(configmap).encode()) < 256 * 1024


def _which(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} not installed")
    return found


def test_readme_commands_name_existing_overlays() -> None:
    """Every `kubectl apply -k` path written in the manifests and README exists."""
    texts = [
        p.read_text()
        for p in (ROOT / "deploy").rglob("*")
        if p.is_file() and p.suffix in (".yaml", ".md")
    ]
    paths = {m for t in texts for m in re.findall(r"apply -k (\S+)", t)}
    assert paths
    for path in paths:
        assert (ROOT / shlex.split(path)[0]).is_dir(), path
