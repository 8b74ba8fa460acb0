"""deploy/kubernetes as `kubectl kustomize` renders it (base and the GPU Operator overlay):
every object valid against the Kubernetes schemas of a current release (offline, the schemas
kubernetes-validate ships), the pieces pointing at each other (Service and PodMonitor at the
daemon's pods and port, workloads at its socket), the security context the docs promise, the
probe command answering against a real gpuletd, and yamllint clean.

Needs `kubectl` (Debian's `kubernetes-client`, kustomize v2, which .ci/run installs; kubectl
1.32 with kustomize v5 renders the same).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import gpulet
from gpulet.nfd import NAMESPACE
from tests.helpers import BIN, Daemon, clean_env, run_cli
from tests.system.test_leases import reservation_model, start_daemon, wait_until

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"
OVERLAY = DEPLOY / "overlays" / "gpu-operator"
EXAMPLE = DEPLOY / "examples" / "caption-pod.yaml"
KUBECTL = shutil.which("kubectl")
NO_KUBECTL = "kubectl not installed (Debian package `kubernetes-client`; .ci/run installs it)"
NEEDS_KUBECTL = pytest.mark.skipif(KUBECTL is None, reason=NO_KUBECTL)
SOCKET = "unix:///run/gpulet/gpulet.sock"
# Kinds whose schema is a CRD's, not Kubernetes': checked by hand below.
CRDS = {("monitoring.coreos.com/v1", "PodMonitor")}
YAML = ["deploy/kubernetes", "deploy/prometheus", "deploy/yamllint.yaml"]


def render(directory: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    r = subprocess.run(
        [KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="module", params=["base", "gpu-operator"])
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    if KUBECTL is None:
        pytest.skip(NO_KUBECTL)
    return render(DEPLOY if request.param == "base" else OVERLAY)


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, [o["kind"] for o in objects]
    return found[0]


def container(ds: dict[str, Any], name: str) -> dict[str, Any]:
    spec = ds["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name)


def flag(c: dict[str, Any], name: str) -> str:
    argv = [*c.get("command", []), *c.get("args", [])]
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
    assert len(values) == 1, argv
    return values[0]


def validate(obj: dict[str, Any]) -> None:
    version = kubernetes_validate.latest_version()
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = "/".join(str(p) for p in e.path)
        pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {where}: {e.message}")


def test_every_object_validates_against_the_schemas(objects: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == [
        "ConfigMap",
        "DaemonSet",
        "Namespace",
        "PodMonitor",
        "Service",
        "ServiceAccount",
    ]
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) not in CRDS:
            validate(obj)
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "gpulet", obj["metadata"]


def test_a_schema_violation_is_caught() -> None:
    # The check above must be able to fail: a DaemonSet with a misspelt field does.
    ds = yaml.safe_load((DEPLOY / "base" / "daemonset.yaml").read_text())
    ds["spec"]["template"]["spec"]["nodeSelecter"] = {"a": "b"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, kubernetes_validate.latest_version(), strict=True)


@NEEDS_KUBECTL
def test_the_overlay_only_adds_the_runtime_class() -> None:
    base, overlay = render(DEPLOY), render(OVERLAY)
    ds_base, ds_overlay = one(base, "DaemonSet"), one(overlay, "DaemonSet")
    assert "runtimeClassName" not in ds_base["spec"]["template"]["spec"]
    assert ds_overlay["spec"]["template"]["spec"].pop("runtimeClassName") == "nvidia"
    assert ds_overlay == ds_base
    assert [o for o in overlay if o["kind"] != "DaemonSet"] == [
        o for o in base if o["kind"] != "DaemonSet"
    ]


def test_the_daemonset_runs_on_gpu_nodes_with_the_node_paths(
    objects: list[dict[str, Any]],
) -> None:
    ds = one(objects, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    gpuletd = container(ds, "gpuletd")
    mounts = {m["mountPath"]: m["name"] for m in gpuletd["volumeMounts"]}
    # The socket's directory and the state directory are the node's own (hostPath), where
    # workload pods and the next gpuletd pod find them.
    address = flag(gpuletd, "--address")
    assert address == SOCKET
    socket_dir = str(Path(address.removeprefix("unix://")).parent)
    assert volumes[mounts[socket_dir]]["hostPath"]["path"] == "/run/gpulet"
    state_dir = flag(gpuletd, "--state-dir")
    assert volumes[mounts[state_dir]]["hostPath"]["path"] == "/var/lib/gpulet"
    config = volumes[mounts["/etc/gpulet"]]["configMap"]["name"]
    cm = one(objects, "ConfigMap")
    assert cm["metadata"]["name"] == config and "gpulet.toml" in cm["data"]
    assert spec["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]


def test_no_container_has_privilege_beyond_what_it_needs(objects: list[dict[str, Any]]) -> None:
    ds = one(objects, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert not spec.get("hostPID") and not spec.get("hostNetwork") and not spec.get("hostIPC")
    assert spec["automountServiceAccountToken"] is False
    for c in spec["containers"] + spec["initContainers"]:
        sc = c["securityContext"]
        assert not sc.get("privileged"), c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert "memory" in c["resources"]["requests"] and "cpu" in c["resources"]["requests"]
    # gpuletd itself: non-root, no capability at all. Only the one-shot chown gets two.
    sc = container(ds, "gpuletd")["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert "add" not in sc["capabilities"]
    assert "add" not in container(ds, "labels")["securityContext"]["capabilities"]
    assert container(ds, "prepare")["securityContext"]["capabilities"]["add"] == [
        "CHOWN",
        "FOWNER",
    ]


def test_probes_ask_grpc_health_over_the_socket(objects: list[dict[str, Any]]) -> None:
    gpuletd = container(one(objects, "DaemonSet"), "gpuletd")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        argv = gpuletd[probe]["exec"]["command"]
        assert argv[:3] == ["gpulet", "--address", SOCKET] and argv[3] == "health", argv
        # The command gives up before the kubelet does, so a hang reads as a failure.
        timeout = float(argv[argv.index("--timeout") + 1])
        assert timeout < gpuletd[probe]["timeoutSeconds"]


def test_service_and_podmonitor_find_the_metrics_port(objects: list[dict[str, Any]]) -> None:
    ds = one(objects, "DaemonSet")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    gpuletd = container(ds, "gpuletd")
    ports = {p["name"]: p["containerPort"] for p in gpuletd["ports"]}
    # gpuletd listens where the port says.
    assert flag(gpuletd, "--metrics") == f"$(POD_IP):{ports['metrics']}"
    svc = one(objects, "Service")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert all(p["targetPort"] in ports for p in svc["spec"]["ports"])
    pm = one(objects, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    endpoints = pm["spec"]["podMetricsEndpoints"]
    assert endpoints and all(e["port"] in ports for e in endpoints)
    # The recording rules and the dashboard aggregate by `node`.
    assert any(
        r.get("targetLabel") == "node"
        and r.get("sourceLabels") == ["__meta_kubernetes_pod_node_name"]
        for e in endpoints
        for r in e.get("relabelings", [])
    )


def test_the_labels_sidecar_writes_where_nfd_reads(objects: list[dict[str, Any]]) -> None:
    ds = one(objects, "DaemonSet")
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    labels = container(ds, "labels")
    out = Path(flag(labels, "--output"))
    mounts = {m["mountPath"]: m for m in labels["volumeMounts"]}
    host = volumes[mounts[str(out.parent)]["name"]]["hostPath"]["path"]
    assert host == "/etc/kubernetes/node-feature-discovery/features.d"
    assert flag(labels, "--address") == SOCKET
    assert mounts["/run/gpulet"]["readOnly"] is True


@NEEDS_KUBECTL
def test_the_example_workload_reaches_the_node_socket() -> None:
    pod = yaml.safe_load(EXAMPLE.read_text())
    validate(pod)
    ds = one(render(DEPLOY), "DaemonSet")
    c = pod["spec"]["containers"][0]
    assert c["command"][:5] == ["gpulet", "run", "--role", "caption", "--"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["GPULET_ADDRESS"] == flag(container(ds, "gpuletd"), "--address")
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/run/gpulet")
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["hostPath"]["path"] == "/run/gpulet"
    # The socket is 0660, group gpuletd's: the pod must be in that group to connect.
    group = container(ds, "gpuletd")["securityContext"]["runAsGroup"]
    assert group in pod["spec"]["securityContext"]["supplementalGroups"]
    assert group in ds["spec"]["template"]["spec"]["securityContext"]["supplementalGroups"]


def test_yamllint_passes() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "yamllint", "-c", "deploy/yamllint.yaml", "--strict", *YAML],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("k8s"), reservation_model("r", 2000))
    try:
        yield d
    finally:
        d.stop()


def test_the_probe_command_answers_against_a_real_daemon(
    objects: list[dict[str, Any]], served: Daemon
) -> None:
    argv = container(one(objects, "DaemonSet"), "gpuletd")["livenessProbe"]["exec"]["command"]
    # The manifest's command as the kubelet runs it, pointed at this test's socket.
    r = served.cli(*argv[3:])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "serving"


def test_health_says_serving_as_json(served: Daemon) -> None:
    assert served.cli_json("health") == {"service": "", "status": "serving", "serving": True}
    named = served.cli_json("health", "--service", "gpulet.v1.LeaseService")
    assert named["serving"] is True


def test_health_of_an_unknown_service_is_not_found(served: Daemon) -> None:
    r = served.cli("health", "--service", "no.such.Service")
    assert r.returncode == 3
    assert "no service named 'no.such.Service'" in r.stderr


def test_health_without_a_daemon_is_unreachable(tmp_path: Path) -> None:
    # No socket at all, and a socket nobody listens on (a gpuletd killed with -9).
    r = run_cli("--address", f"unix://{tmp_path}/gone.sock", "health")
    assert r.returncode == 6, r.stderr
    dead = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(dead))
    s.close()
    r = run_cli("--address", f"unix://{dead}", "health", "--timeout", "2")
    assert r.returncode == 6, r.stderr
    assert "not reachable" in r.stderr


def test_the_labels_container_writes_the_feature_file(
    objects: list[dict[str, Any]], served: Daemon, tmp_path: Path
) -> None:
    """The container's command as the kubelet runs it, with this test's socket and directory
    in place of the node's: it waits for gpuletd, then writes the labels."""
    labels = container(one(objects, "DaemonSet"), "labels")
    out = tmp_path / "gpulet"
    argv = [
        a.replace(SOCKET, served.address).replace(flag(labels, "--output"), str(out))
        for a in labels["command"] + labels["args"]
    ]
    env = clean_env({"PATH": f"{BIN}:{os.environ['PATH']}"})
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_until(out.exists, timeout=20)
        assert f"{NAMESPACE}/gpu.count=1" in out.read_text().splitlines()
        assert proc.poll() is None  # still running: it rewrites every --every seconds
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_replaced_pod_keeps_the_leases(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    """The kubelet ends a pod with TERM; with the manifest's --on-stop the next gpuletd on the
    node restores the leases from the hostPath state instead of starting empty."""
    on_stop = flag(container(one(objects, "DaemonSet"), "gpuletd"), "--on-stop")
    d = start_daemon(tmp_path, reservation_model("r", 2000), "--on-stop", on_stop)
    try:
        with gpulet.Client(address=d.address) as c:
            lease = c.acquire("r", ttl=300)
        d.stop(signal.SIGTERM, keep=True)
        assert '"event": "daemon.handed_off"' in d.output()
        d.start()
        with gpulet.Client(address=d.address) as c:
            renewed = c.renew(lease.lease_id, lease.token, ttl=60)
            assert renewed.lease_id == lease.lease_id
            assert [x.lease_id for x in c.list_leases()] == [lease.lease_id]
    finally:
        d.stop()
