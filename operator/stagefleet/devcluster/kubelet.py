"""Local kubelet of the dev cluster: simulated nodes, a tiny scheduler, pods run as host processes.

It speaks only the public Kubernetes API (`kubeapi.KubeAPI`, from a kubeconfig), so it works against the
emulator or any API server. Per pod: volumes are materialised under ``root_dir/pods/<uid>/``, each
container is forked by a long-lived ``nsinit.py --zygote`` process (`zygote`; or runs as
``unshare -m --propagation private -- python -I -S nsinit.py SPEC``): bind mounts in a private mount
namespace, then exec of the command from the host PATH; its merged stdout/stderr goes to
``logs_dir/<ns>/<pod>/<container>.log``. Decisions (scheduling, env, volumes, status) are the pure
functions of `podruntime`; this module does the processes and API I/O.

This is a development and test tool: processes run as the kubelet's user, without image, cgroup, pid or
network isolation; `securityContext`, resources and probes are recorded, not enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from stagefleet.devcluster import podruntime as pr
from stagefleet.devcluster.kubeapi import ApiError, ClusterAccess, KubeAPI
from stagefleet.devcluster.zygote import Zygote, ZygoteError, ZygoteProcess, signal_container

NSINIT = str(Path(__file__).with_name("nsinit.py"))
# What stands in for the container image: the interpreter, the venv and the stagefleet sources. A volume
# mounted over one of them (the chart's emptyDir on /tmp, with a checkout under /tmp) must not hide it, as a
# volume never hides the image's own programs in a real pod; nsinit binds them back over such volumes.
IMAGE_PATHS = sorted({sys.base_prefix, sys.prefix, str(Path(__file__).resolve().parents[2])})
KUBELET_VERSION = "v1.34.0-stagefleet-dev"
RESTART_BACKOFF_START = 1.0  # Kubernetes starts at 10 s; short here so tests of OnFailure stay quick
RESTART_BACKOFF_MAX = 30.0
# Fault injection (`Kubelet.admission_refusal`): refuse the node's next N pods at admission (OutOfcpu).
REFUSE_ANNOTATION = "dev.stagefleet.io/refuse-pods"
FIRST_REPORT_DELAY = 0.5  # a pod's Pending/ContainerCreating status is written only if it lasts this long
# Node heartbeats, as a real kubelet sends them: a Lease per node in kube-node-lease renewed every 10 s
# (a quarter of its 40 s duration), and the node status (every condition's lastHeartbeatTime) posted every
# 5 min when nothing changed (nodeStatusReportFrequency). Two nodes cost 0.2 writes/s.
NODE_LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_SECONDS = 40
LEASE_RENEW_SECONDS = 10.0
NODE_STATUS_REPORT_SECONDS = 300.0
TRANSIENT = (ApiError, aiohttp.ClientError, TimeoutError, OSError)  # retried, never fatal to a pod
TERMINAL = ("Succeeded", "Failed")


def now() -> str:
    """RFC 3339 UTC timestamp with second precision, as the API uses."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    """RFC 3339 UTC with microseconds (the API's MicroTime, e.g. a Lease's renewTime)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_manifest(node: Mapping[str, Any], renew_time: str) -> dict[str, Any]:
    """The node's Lease as a real kubelet creates it: owned by the Node, held by it for 40 s per renewal."""
    name = node["metadata"]["name"]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": NODE_LEASE_NAMESPACE,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}
            ],
        },
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": renew_time,
        },
    }


def _parse_time(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def default_path() -> str:
    """The PATH pods get: the project's venv `bin` first (so `stagefleet-worker` resolves), then ours."""
    venv_bin = str(Path(sys.executable).parent)
    rest = [
        p for p in os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":") if p and p != venv_bin
    ]
    return ":".join([venv_bin, *rest])


@dataclass(frozen=True)
class NodeConfig:
    """One simulated node."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Mapping[str, Any], ...] = ()
    pods: int = 8
    cpu: str = "2"
    memory: str = "8Gi"
    # The architecture the node says it has (labels, nodeInfo); None: this machine's. Its pods still run
    # here: a build for another architecture runs under emulation (binfmt_misc), as a real node's would not
    # need to, so that placement by architecture can be tried without such a machine.
    arch: str | None = None


def node_configs(count: int, pods_per_node: int, labels: Mapping[str, str] | None = None) -> list[NodeConfig]:
    """`devnode-1` … `devnode-N`, all with the same extra labels."""
    return [NodeConfig(f"devnode-{i}", dict(labels or {}), pods=pods_per_node) for i in range(1, count + 1)]


def node_manifest(cfg: NodeConfig) -> dict[str, Any]:
    """The Node object the kubelet registers (metadata + spec)."""
    labels = {
        "kubernetes.io/hostname": cfg.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": cfg.arch or _arch(),
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": cfg.arch or _arch(),
        "stagefleet.io/devcluster": "true",
        **cfg.labels,
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": cfg.name, "labels": labels},
        "spec": {"taints": [dict(t) for t in cfg.taints]} if cfg.taints else {},
    }


def _arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def node_status(
    cfg: NodeConfig, *, ready: bool, when: str, previous: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """Node status as a healthy (or lost) kubelet reports it."""
    prev = {c.get("type"): c for c in previous}

    def cond(ctype: str, status: str, reason: str, message: str) -> dict[str, Any]:
        p = prev.get(ctype)
        ltt = p.get("lastTransitionTime") if p and p.get("status") == status else when
        return {
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": when,
            "lastTransitionTime": ltt,
        }

    if ready:
        conds = [
            cond(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ]
    else:
        conds = [
            cond(t, "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.")
            for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")
        ]
    capacity = {"cpu": cfg.cpu, "memory": cfg.memory, "pods": str(cfg.pods), "ephemeral-storage": "100Gi"}
    return {
        "capacity": capacity,
        "allocatable": dict(capacity),
        "conditions": conds,
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": cfg.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": cfg.arch or _arch(),
            "containerRuntimeVersion": "stagefleet-devcluster://1",
            "osImage": "stagefleet dev cluster (host processes)",
            "kernelVersion": os.uname().release,
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
        },
    }


class PodRunner:
    """Runs one pod bound to one of our nodes, from volumes to the final status, and its deletion."""

    def __init__(self, kubelet: Kubelet, pod: dict[str, Any]) -> None:
        self.k = kubelet
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.ns: str = meta.get("namespace", "default")
        self.name: str = meta["name"]
        self.node: str = pod["spec"]["nodeName"]
        spec = pod["spec"]
        self.restart_policy: str = spec.get("restartPolicy") or "Always"
        self.init_specs: list[dict[str, Any]] = list(spec.get("initContainers") or [])
        self.main_specs: list[dict[str, Any]] = list(spec.get("containers") or [])
        self.init = [pr.ContainerRun(c["name"], c.get("image", "")) for c in self.init_specs]
        self.main = [pr.ContainerRun(c["name"], c.get("image", "")) for c in self.main_specs]
        self.init_done = not self.init_specs
        self.procs: dict[str, asyncio.subprocess.Process | ZygoteProcess] = {}
        self._volume_data: pr.ObjectData | None = None
        self.reports_sent = 0
        self.dir = kubelet.root_dir / "pods" / self.uid
        self.log_dir = kubelet.logs_dir / self.ns / self.name
        self.start_time = (pod.get("status") or {}).get("startTime") or now()
        self.phase_override: tuple[str, str, str] | None = None  # (phase, reason, message)
        self.refused: tuple[str, str] | None = None  # refused at admission: (reason, message), nothing ran
        self.extra_conditions: list[dict[str, Any]] = []
        self.stopping = False  # deletion, deadline or node loss: no (re)starts any more
        self.stop_event = asyncio.Event()
        self.finished = asyncio.Event()
        self.lock = asyncio.Lock()
        self.volume_dirs: dict[str, str] = {}
        self.ro_volumes: set[str] = set()
        self.task: asyncio.Task[None] | None = None
        self.mount_message = ""
        self.report_failed = False
        self.retrying = False
        # The last status body the API accepted, and the status it answered with.
        self.reported: tuple[dict[str, Any], Any] | None = None

    # -------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self.task = asyncio.create_task(self._main(), name=f"pod {self.ns}/{self.name}")

    async def _main(self) -> None:
        refusal = await self.k.admission_refusal(self.node, self.pod)
        if refusal is not None:
            # As a real kubelet's admission does (OutOfcpu when its count of the node's pods lags the
            # scheduler's): Failed with the reason, no container status, nothing started.
            self.refused = refusal
            self.finished.set()
            with contextlib.suppress(Exception):
                await self.report()
            return
        deadline_task = None
        # No status write for "ContainerCreating" when the container starts soon anyway: its Running report
        # says it all (a real kubelet's status manager batches the same way). A slow start still shows.
        first_report = asyncio.create_task(self._report_after(FIRST_REPORT_DELAY))
        try:
            ads = self.pod["spec"].get("activeDeadlineSeconds")
            if ads is not None:
                deadline_task = asyncio.create_task(self._deadline(float(ads)))
            if not await self._prepare_volumes():
                return
            for spec, run in zip(self.init_specs, self.init, strict=True):
                if not await self._run_until_done(spec, run, init=True):
                    return
            self.init_done = True
            if self.init_specs:  # Initialized turns True now (without init containers it always was)
                await self.report()
            await asyncio.gather(
                *(
                    self._run_until_done(s, r, init=False)
                    for s, r in zip(self.main_specs, self.main, strict=True)
                )
            )
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a kubelet bug must not kill the kubelet
            self.k.log(f"pod {self.ns}/{self.name}: internal error: {e!r}")
            self.phase_override = ("Failed", "KubeletError", f"dev-cluster kubelet error: {e}")
        finally:
            first_report.cancel()
            if deadline_task is not None:
                deadline_task.cancel()
            await self._kill_all(0)
            self.finished.set()
            with contextlib.suppress(Exception):
                await self.report()

    async def _report_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if not self.reports_sent:
            await self.report()

    async def _deadline(self, seconds: float) -> None:
        remaining = _parse_time(self.start_time) + seconds - dt.datetime.now(dt.UTC).timestamp()
        await asyncio.sleep(max(remaining, 0))
        if self.finished.is_set() or self.stopping:
            return
        self.stop()
        self.phase_override = (
            "Failed",
            "DeadlineExceeded",
            "Pod was active on the node longer than the specified deadline",
        )
        await self._kill_all(self._grace())
        await self.report()

    def stop(self) -> None:
        """No more (re)starts; wakes every pause."""
        self.stopping = True
        self.stop_event.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep that ends early when the pod is being stopped."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):  # not wait_for: see apiserver/gc.py
                await self.stop_event.wait()

    def _grace(self) -> float:
        g = self.pod["spec"].get("terminationGracePeriodSeconds")
        return float(g if g is not None else 30)

    # -------------------------------------------------------------------------------- volumes

    async def _fetch_data(self) -> pr.ObjectData:
        secrets_needed, cms_needed = pr.referenced_objects(self.pod)
        secrets: dict[str, Mapping[str, bytes] | None] = {}
        cms: dict[str, Mapping[str, bytes] | None] = {}
        for name in sorted(secrets_needed):
            secrets[name] = await self._get_obj(
                f"/api/v1/namespaces/{self.ns}/secrets/{name}", pr.secret_data
            )
        for name in sorted(cms_needed):
            cms[name] = await self._get_obj(
                f"/api/v1/namespaces/{self.ns}/configmaps/{name}", pr.configmap_data
            )
        return pr.ObjectData(self.ns, secrets, cms)

    async def _get_obj(self, path: str, decode: Any) -> Mapping[str, bytes] | None:
        try:
            obj = await self.k.api.get(path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        result: Mapping[str, bytes] = decode(obj)
        return result

    async def _prepare_volumes(self) -> bool:
        """Materialise every volume; keep retrying (ContainerCreating + FailedMount) until it works."""
        while not self.stopping:
            try:
                data = await self._fetch_data()
                layouts = [
                    pr.volume_layout(v, self.pod, data, self.k.allocatable(self.node))
                    for v in self.pod["spec"].get("volumes") or []
                ]
                break
            except pr.MountError as e:
                if str(e) != self.mount_message:
                    self.mount_message = str(e)
                    self.k.event(self.pod, "Warning", "FailedMount", str(e))
                await self._pause(1.0)
            except TRANSIENT as e:
                self.k.log(f"pod {self.ns}/{self.name}: reading volume sources: {e}")
                await self._pause(1.0)
        else:
            return False
        self._volume_data = data  # the first container start reuses it: one read of each source per pod
        await asyncio.to_thread(self._write_volumes, layouts)
        return True

    def _write_volumes(self, layouts: Sequence[pr.VolumeLayout]) -> None:
        for sub in ("volumes", "term", "specs", "staging"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        for lay in layouts:
            if lay.kind == "hostPath":
                self.volume_dirs[lay.name] = lay.host_path or "/"
                continue
            vdir = self.dir / "volumes" / lay.name
            vdir.mkdir(parents=True, exist_ok=True)
            for f in lay.files:
                target = vdir / f.path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(f.content)
                target.chmod(f.mode)
            self.volume_dirs[lay.name] = str(vdir)
            if lay.read_only:
                self.ro_volumes.add(lay.name)

    # -------------------------------------------------------------------------------- containers

    async def _run_until_done(self, spec: dict[str, Any], run: pr.ContainerRun, *, init: bool) -> bool:
        """Run one container, restarting it per restartPolicy; True when it ended successfully."""
        backoff = RESTART_BACKOFF_START
        while not self.stopping:
            code = await self._run_once(spec, run, init=init)
            if code is None:  # could not start (config error): retry after a pause
                await self._pause(1.0)
                continue
            await self.report()
            restart = (self.restart_policy == "Always" and not init) or (
                self.restart_policy != "Never" and code != 0
            )
            if not restart or self.stopping:
                return code == 0
            run.last_state = run.state_dict()
            run.state, run.reason = "waiting", "CrashLoopBackOff"
            run.message = (
                f"back-off {int(backoff)}s restarting failed container={run.name} "
                f"pod={self.name}_{self.ns}({self.uid})"
            )
            await self.report()
            self.k.event(
                self.pod,
                "Warning",
                "BackOff",
                f"Back-off restarting failed container {run.name} in pod {self.name}_{self.ns}({self.uid})",
            )
            await self._pause(backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX)
            run.restart_count += 1
        return False

    async def _run_once(self, spec: dict[str, Any], run: pr.ContainerRun, *, init: bool) -> int | None:
        """Start the container and wait for it. None when it could not be configured yet."""
        try:
            data, self._volume_data = self._volume_data or await self._fetch_data(), None
            env = pr.resolve_env(spec, self.pod, data, self.k.allocatable(self.node))
            argv = pr.container_argv(spec, env)
            term_file = self.dir / "term" / run.name
            mounts = pr.mount_plan(spec, self.volume_dirs, self.ro_volumes, env, str(term_file))
        except pr.ConfigError as e:
            if run.reason != "CreateContainerConfigError" or run.message != str(e):
                run.state, run.reason, run.message = "waiting", "CreateContainerConfigError", str(e)
                self.k.event(self.pod, "Warning", "Failed", f"Error: {e}")
                await self.report()
            return None
        except TRANSIENT as e:
            self.k.log(f"pod {self.ns}/{self.name}: reading env sources: {e}")
            return None
        proc_env = {"PATH": self.k.path, "HOSTNAME": self.name, "HOME": "/root", **env}
        spec_file = self.dir / "specs" / f"{run.name}.json"
        await asyncio.to_thread(self._prepare_files, run, mounts, term_file)
        status_r, status_w = os.pipe()  # closed by nsinit's exec: EOF means the command runs
        try:
            spec_file.write_text(
                json.dumps(
                    {
                        "mounts": [m.__dict__ for m in mounts],
                        "argv": argv,
                        "env": proc_env,
                        "cwd": spec.get("workingDir") or None,
                        "staging": str(self.dir / "staging" / run.name),
                        "image_paths": IMAGE_PATHS,
                        "status_fd": status_w,
                    }
                )
            )
            log_path = self.log_dir / f"{run.name}.log"
            started = now()
            with open(log_path, "ab") as log:
                proc = await self.k.start_container(spec_file, log.fileno(), status_w, proc_env)
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        self.procs[run.name] = proc
        start_error = await _read_to_eof(status_r)
        if not start_error:
            run.state, run.reason, run.message = "running", "", ""
            run.started_at, run.finished_at = started, None
            run.container_id = f"stagefleet://{uuid.uuid4().hex}"
            await self.report()
            self.k.event(self.pod, "Normal", "Started", f"Started container {run.name}")
        rc = await proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # like a container: nothing outlives the main process
        self.procs.pop(run.name, None)
        code = rc if rc >= 0 else 128 - rc
        run.state, run.exit_code, run.finished_at = "terminated", code, now()
        if start_error:
            run.started_at = run.started_at if run.container_id else None
            run.reason, run.message = (
                "StartError",
                start_error.decode(errors="replace")[: pr.MAX_TERMINATION_MESSAGE],
            )
            run.exit_code = 128
            return 128
        run.reason = pr.terminated_reason(code)
        file_bytes = await asyncio.to_thread(_read_head, term_file, pr.MAX_TERMINATION_MESSAGE)
        run.message = pr.termination_message(
            file_bytes, lambda: _read_tail(log_path, 64 * 1024), code, spec.get("terminationMessagePolicy")
        )
        return code

    def _prepare_files(self, run: pr.ContainerRun, mounts: Sequence[pr.Mount], term_file: Path) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{run.name}.log"
        if run.restart_count == 0 and not run.last_state:
            log_path.unlink(missing_ok=True)  # a new pod that reuses a name starts with an empty log
        elif log_path.exists():
            log_path.replace(self.log_dir / f"{run.name}.previous.log")
        term_file.write_bytes(b"")
        term_file.chmod(0o666)
        for m in mounts:  # subPath sources Kubernetes creates as directories
            if not m.is_file and not os.path.exists(m.source):
                os.makedirs(m.source, exist_ok=True)

    async def _kill_all(self, grace: float) -> None:
        """SIGTERM every running container's process group, SIGKILL what is left after `grace`."""
        procs = list(self.procs.values())
        if not procs:
            return
        sig = signal.SIGTERM if grace > 0 else signal.SIGKILL
        for p in procs:
            signal_container(p.pid, sig)
        if grace > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), grace)
        for p in procs:
            signal_container(p.pid, signal.SIGKILL)
        await asyncio.gather(*(p.wait() for p in procs))

    # -------------------------------------------------------------------------------- events from the API

    def update(self, pod: dict[str, Any]) -> None:
        """A newer version of the pod arrived."""
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and not getattr(self, "_deleting", False):
            self._deleting = True
            self.k.spawn(self._graceful_delete())

    async def _graceful_delete(self) -> None:
        """SIGTERM, SIGKILL after the grace period, record the final status, then remove the pod."""
        self.stop()
        grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        grace_s = float(grace if grace is not None else self._grace())
        if self.procs:
            self.k.event(self.pod, "Normal", "Killing", "Stopping container " + ", ".join(self.procs))
        await self._kill_all(grace_s)
        if self.task is not None:  # it records the containers' exit and reports, then ends (stopping)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        self.finished.set()
        with contextlib.suppress(ApiError):
            await self.report()
        with contextlib.suppress(ApiError):
            await self.k.api.delete(
                f"/api/v1/namespaces/{self.ns}/pods/{self.name}",
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": self.uid},
                },
            )

    async def gone(self) -> None:
        """The pod object is gone: kill at once, drop local state."""
        self.stop()
        await self._kill_all(0)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        await asyncio.to_thread(shutil.rmtree, self.dir, True)

    # -------------------------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """The full pod status for the current runtime state (pure given the fields)."""
        if self.refused is not None:
            return {"phase": "Failed", "reason": self.refused[0], "message": self.refused[1]}
        when = now()
        if self.phase_override is not None:
            phase = self.phase_override[0]
        else:
            phase = pr.pod_phase(self.restart_policy, self.init, self.main, self.init_done)
        previous = (self.pod.get("status") or {}).get("conditions") or []
        conds = pr.pod_conditions(phase, self.init, self.main, self.init_done, previous, when)
        conds += self.extra_conditions
        for c in self.main + self.init:
            if c.state == "terminated" and not c.started_at:
                c.started_at = c.finished_at
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": conds,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "containerStatuses": [c.status_dict() for c in self.main],
        }
        if self.init:
            status["initContainerStatuses"] = [c.status_dict(init=True) for c in self.init]
        if self.phase_override is not None:
            status["reason"], status["message"] = self.phase_override[1], self.phase_override[2]
        return status

    async def report(self, force: bool = False) -> None:
        """Send the current status (merge patch on pods/status); nothing while the node is lost (its
        kubelet is gone), `recover_node` reports then.

        Never raises: when the API keeps failing (faults, overload) a background retry sends the then
        current status later, so a finished pod's final status is not lost.
        """
        if self.k.is_lost(self.node) or self.k.shutting_down:
            return
        async with self.lock:
            body = {"status": self.status()}
            if not force and self.reported == (body, (self.pod.get("status") or {})):
                # Unchanged since the last report, and nobody else changed the status in the API since
                # (as the kubelet's status manager skips such a sync): no write.
                return
            try:
                updated = await self.k.api.merge_patch(
                    f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status", body
                )
            except ApiError as e:
                if e.status not in (404, 409):
                    self._schedule_retry(e, force)
                return
            except TRANSIENT as e:
                self._schedule_retry(e, force)
                return
            self.report_failed = False
            self.reports_sent += 1
            self.reported = None
            if isinstance(updated, dict) and updated.get("metadata", {}).get("uid") == self.uid:
                self.pod = {**self.pod, "status": updated.get("status", {})}
                self.reported = (body, self.pod["status"])

    def _schedule_retry(self, error: BaseException, force: bool) -> None:
        self.k.log(f"pod {self.ns}/{self.name}: status update failed, will retry: {error}")
        self.report_failed = True
        if self.retrying:
            return
        self.retrying = True

        async def retry() -> None:
            try:
                while self.report_failed and not self.k.shutting_down:
                    await asyncio.sleep(1.0)
                    self.report_failed = False
                    await self.report(force)  # sets report_failed again if it fails
            finally:
                self.retrying = False

        self.k.spawn(retry())


def _cpu_millis(value: Any) -> int:
    """A CPU quantity ("500m", "2", 0.5) in millicores; 0 when absent or unreadable."""
    text = str(value or "0").strip()
    try:
        return int(float(text[:-1])) if text.endswith("m") else int(float(text) * 1000)
    except ValueError:
        return 0


async def _read_to_eof(fd: int) -> bytes:
    """Everything written to a pipe until its last writer closes it (without blocking the loop)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        return await reader.read()
    finally:
        transport.close()


def _read_head(path: Path, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return b""


def _read_tail(path: Path, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(size - limit, 0))
            return f.read()
    except OSError:
        return b""


class Kubelet:
    """The asyncio kubelet: node registration, pod watch, scheduling, pod runners."""

    def __init__(
        self,
        api: KubeAPI,
        *,
        nodes: Sequence[NodeConfig],
        root_dir: Path,
        logs_dir: Path,
        path: str | None = None,
        python: str | None = None,
        verbose: bool = False,
        zygote: bool | None = None,
        lease_seconds: float = LEASE_RENEW_SECONDS,
        status_report_seconds: float = NODE_STATUS_REPORT_SECONDS,
    ) -> None:
        self.api = api
        self.nodes = {n.name: n for n in nodes}
        self.lease_seconds = lease_seconds
        self.status_report_seconds = status_report_seconds
        self._node_status_lock = asyncio.Lock()  # a heartbeat never lands after lose_node's NotReady
        self._leases: set[str] = set()  # nodes whose Lease we created (renewals patch it)
        # Fork containers from a zygote (default) or exec `unshare` per container (STAGEFLEET_ZYGOTE=0).
        self.use_zygote = os.environ.get("STAGEFLEET_ZYGOTE", "1") != "0" if zygote is None else zygote
        self._zygote: Zygote | None = None
        self._zygote_lock = asyncio.Lock()
        self.root_dir = Path(root_dir)
        self.logs_dir = Path(logs_dir)
        self.path = path or default_path()
        self.python = python or sys.executable
        # Absolute, because the pod's own PATH is what the process is started with.
        self.unshare = shutil.which("unshare") or "/usr/bin/unshare"
        self.verbose = verbose
        self.pods: dict[str, dict[str, Any]] = {}  # uid -> latest manifest (all namespaces)
        self.runners: dict[str, PodRunner] = {}
        self.node_objs: dict[str, dict[str, Any]] = {}
        self.lost: set[str] = set()
        self.assumed: dict[str, str] = {}  # uid -> node, bound by us but not yet seen in the watch
        self.unschedulable_msg: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = asyncio.Event()
        self.shutting_down = False
        self.background: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Any) -> None:
        """Run a fire-and-forget coroutine that shutdown() still cancels."""
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def log(self, message: str) -> None:
        if self.verbose:
            print(f"kubelet: {message}", file=sys.stderr, flush=True)

    def is_lost(self, node: str) -> bool:
        return node in self.lost

    def allocatable(self, node: str) -> dict[str, str]:
        cfg = self.nodes.get(node)
        return {"cpu": cfg.cpu, "memory": cfg.memory, "ephemeral-storage": "100Gi"} if cfg else {}

    def event(
        self, pod: Mapping[str, Any], etype: str, reason: str, message: str, source: str = "kubelet"
    ) -> None:
        """Best-effort core/v1 Event about a pod (what `kubectl describe` shows); none from a lost node's
        kubelet (the scheduler's still go out)."""
        if source == "kubelet" and (pod.get("spec") or {}).get("nodeName") in self.lost:
            return
        meta = pod["metadata"]
        ns = meta.get("namespace", "default")
        when = now()
        ev = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": meta["name"] + ".", "namespace": ns},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": ns,
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message,
            "type": etype,
            "count": 1,
            "firstTimestamp": when,
            "lastTimestamp": when,
            "source": {"component": source, "host": (pod.get("spec") or {}).get("nodeName") or ""},
            "reportingComponent": source,
            "reportingInstance": (pod.get("spec") or {}).get("nodeName") or "",
        }

        async def post() -> None:
            with contextlib.suppress(Exception):
                await self.api.request("POST", f"/api/v1/namespaces/{ns}/events", body=ev, attempts=2)

        self.spawn(post())

    # -------------------------------------------------------------------------------- containers

    async def start_container(
        self, spec_file: Path, log_fd: int, status_w: int, env: Mapping[str, str]
    ) -> asyncio.subprocess.Process | ZygoteProcess:
        """Start nsinit's spec in a private mount namespace: forked by the zygote, else via `unshare`."""
        if self.use_zygote:
            async with self._zygote_lock:
                if self._zygote is None or not self._zygote.alive:
                    if self._zygote is not None:
                        self.use_zygote = False  # it died once: no respawn loop, use the slow path
                    else:
                        try:
                            self._zygote = await Zygote.start(self.python, NSINIT)
                        except OSError as e:
                            self.log(f"cannot start the container zygote ({e}); using unshare")
                            self.use_zygote = False
            if self.use_zygote and self._zygote is not None:
                with contextlib.suppress(ZygoteError):
                    return await self._zygote.spawn(spec_file, log_fd, status_w)
        return await asyncio.create_subprocess_exec(
            self.unshare,
            "-m",
            "--propagation",
            "private",
            "--",
            self.python,
            "-I",
            "-S",  # nsinit needs the standard library only: no site, half the start-up CPU per pod
            NSINIT,
            str(spec_file),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_fd,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            env=dict(env),
            pass_fds=(status_w,),
        )

    # -------------------------------------------------------------------------------- nodes

    async def register_nodes(self) -> None:
        for cfg in self.nodes.values():
            manifest = node_manifest(cfg)
            try:
                obj = await self.api.create("/api/v1/nodes", manifest)
            except ApiError as e:
                if e.status != 409:
                    raise
                obj = await self.api.merge_patch(
                    f"/api/v1/nodes/{cfg.name}",
                    {
                        "metadata": {"labels": manifest["metadata"]["labels"]},
                        "spec": {"taints": manifest["spec"].get("taints"), "unschedulable": None},
                    },
                )
            self.node_objs[cfg.name] = obj
            await self._post_node_status(cfg.name, ready=True)
            await self.renew_lease(cfg.name)

    async def renew_lease(self, name: str) -> None:
        """Create or renew the node's Lease in kube-node-lease, as a real kubelet's lease controller does."""
        path = f"/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases"
        if name not in self._leases:
            try:
                await self.api.create(path, lease_manifest(self.node_objs[name], micro_now()))
                self._leases.add(name)
                return
            except ApiError as e:
                if e.status != 409:
                    raise
                self._leases.add(name)
        spec = {
            "holderIdentity": name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": micro_now(),
        }
        try:
            await self.api.merge_patch(f"{path}/{name}", {"spec": spec})
        except ApiError as e:
            if e.status == 404:
                self._leases.discard(name)  # deleted: created again on the next beat
            raise

    async def _heartbeat(self, name: str) -> None:
        """The node status a real kubelet reports every nodeStatusReportFrequency (new lastHeartbeatTime)."""
        async with self._node_status_lock:
            if name not in self.lost:
                await self._post_node_status(name, ready=True)

    async def _every(self, seconds: float, beat: Any) -> None:
        """Run `beat(node)` for every node that is not lost, every `seconds`; failures wait for the next."""
        while True:
            await asyncio.sleep(seconds)
            for name in self.nodes:
                if name in self.lost or name not in self.node_objs:
                    continue
                try:
                    await beat(name)
                except TRANSIENT as e:
                    self.log(f"node {name}: {getattr(beat, '__name__', 'heartbeat')}: {e}")

    async def _post_node_status(self, name: str, *, ready: bool) -> None:
        prev = ((self.node_objs.get(name) or {}).get("status") or {}).get("conditions") or []
        obj = await self.api.merge_patch(
            f"/api/v1/nodes/{name}/status",
            {"status": node_status(self.nodes[name], ready=ready, when=now(), previous=prev)},
        )
        if isinstance(obj, dict):
            self.node_objs[name] = obj

    async def lose_node(self, name: str) -> None:
        """Node loss as a real cluster sees it: the node's kubelet is gone. It stops reporting — no Lease
        renewals, no node or pod status, no events — and stops acting for that node: its pods' processes
        run on (a dead kubelet is not a dead machine) with their statuses frozen as last reported, and
        deletions or new pods bound to the node wait for `recover_node`. What the API then shows is the
        control plane's doing (`nodelifecycle`): after the grace period the node goes Ready=Unknown with
        the unreachable taints, its pods Ready=False, and pods past their NoExecute toleration get a
        deletionTimestamp (and stay Terminating). The scheduler, a control-plane part, still places pods
        on the node until it is tainted."""
        if name not in self.nodes:
            raise KeyError(name)
        async with self._node_status_lock:  # no heartbeat lands after this
            self.lost.add(name)
        self._wake.set()

    async def recover_node(self, name: str) -> None:
        """The node's kubelet comes back: it reports the node Ready and renews its Lease (the control plane
        then takes the taints off), and catches up with what it missed: the processes of pods deleted
        meanwhile (force-deleted, say) are killed, pods marked for deletion are stopped gracefully and
        removed, the others' current status is reported (a container that ended meanwhile shows it), and
        pods bound to the node meanwhile are started."""
        if name not in self.nodes:
            raise KeyError(name)
        async with self._node_status_lock:
            self.lost.discard(name)
            with contextlib.suppress(*TRANSIENT):
                await self._post_node_status(name, ready=True)
        with contextlib.suppress(*TRANSIENT):
            await self.renew_lease(name)
        for uid, runner in list(self.runners.items()):
            if runner.node != name:
                continue
            pod = self.pods.get(uid)
            if pod is None:
                await self._pod_deleted(runner.pod)
                continue
            runner.update(pod)
            if not pod["metadata"].get("deletionTimestamp"):
                runner.reported = None
                await runner.report(force=True)
        for pod in [p for uid, p in self.pods.items() if uid not in self.runners]:
            if (pod.get("spec") or {}).get("nodeName") == name:
                await self._on_pod("MODIFIED", pod)
        self._wake.set()

    # -------------------------------------------------------------------------------- watches

    async def run(self) -> None:
        """Register nodes, then list+watch pods and nodes and schedule, until cancelled."""
        (self.root_dir / "pods").mkdir(parents=True, exist_ok=True)
        (self.root_dir / "pods").chmod(0o700)  # secret volumes live below
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        await self.register_nodes()
        pods_synced = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._informer("/api/v1/pods", self._on_pod, pods_synced)),
            asyncio.create_task(self._informer("/api/v1/nodes", self._on_node, asyncio.Event())),
            asyncio.create_task(self._scheduler()),
            asyncio.create_task(self._every(self.lease_seconds, self.renew_lease)),
            asyncio.create_task(self._every(self.status_report_seconds, self._heartbeat)),
        ]
        await pods_synced.wait()
        self.ready.set()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            for t in self._tasks:
                t.cancel()

    async def _informer(self, path: str, handler: Any, synced: asyncio.Event) -> None:
        """List then watch forever; re-list on 410 Gone or any broken stream."""
        while True:
            try:
                listing = await self.api.get(path)
                seen = set()
                for item in listing.get("items") or []:
                    seen.add(item["metadata"]["uid"])
                    await handler("ADDED", item)
                await handler("SYNC", {"uids": seen})
                synced.set()
                rv = listing["metadata"].get("resourceVersion", "")
                while True:
                    async for ev in self.api.watch(path, rv):
                        etype, obj = ev.get("type"), ev.get("object") or {}
                        if etype == "ERROR":
                            if obj.get("code") == 410:
                                raise _Relist()
                            continue
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if etype != "BOOKMARK":
                            await handler(etype, obj)
            except asyncio.CancelledError:
                raise
            except _Relist:
                continue
            except ApiError as e:
                if e.status != 410:
                    self.log(f"{path}: {e}")
                    await asyncio.sleep(0.5)
            except Exception as e:  # noqa: BLE001 - connection drops, injected faults: re-list
                self.log(f"{path}: {e!r}")
                await asyncio.sleep(0.2)

    async def _on_node(self, etype: str, obj: dict[str, Any]) -> None:
        if etype == "SYNC":
            return
        name = obj["metadata"]["name"]
        if name in self.nodes:
            if etype == "DELETED":
                self.node_objs.pop(name, None)
            else:
                self.node_objs[name] = obj
                conds = (obj.get("status") or {}).get("conditions") or ()
                ready = next((c for c in conds if c.get("type") == "Ready"), None)
                if ready is not None and ready.get("status") != "True" and name not in self.lost:
                    # The control plane marked a node whose kubelet is alive Unknown (its heartbeats were
                    # late): a real kubelet's next status update (every 10 s) puts its own view back.
                    self.spawn(self._heartbeat_quietly(name))
            self._wake.set()

    async def _heartbeat_quietly(self, name: str) -> None:
        with contextlib.suppress(*TRANSIENT):
            await self._heartbeat(name)

    async def _on_pod(self, etype: str, pod: dict[str, Any]) -> None:
        if etype == "SYNC":
            for uid in set(self.pods) - pod["uids"]:
                await self._pod_deleted(self.pods[uid])
            return
        uid = pod["metadata"]["uid"]
        if etype == "DELETED":
            await self._pod_deleted(pod)
            return
        self.pods[uid] = pod
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            self.assumed.pop(uid, None)
        if node in self.lost:
            pass  # its kubelet is gone: it sees nothing (recover_node catches up from self.pods)
        elif node in self.nodes:
            runner = self.runners.get(uid)
            phase = (pod.get("status") or {}).get("phase")
            if runner is not None:
                runner.update(pod)
            elif phase in TERMINAL:
                if pod["metadata"].get("deletionTimestamp"):
                    await self._finalize_delete(pod)
            elif pod["metadata"].get("deletionTimestamp"):
                await self._finalize_delete(pod)
            else:
                runner = PodRunner(self, pod)
                self.runners[uid] = runner
                runner.start()
        self._wake.set()

    async def _finalize_delete(self, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(ApiError):
            await self.api.delete(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": meta["uid"]},
                },
            )

    async def _pod_deleted(self, pod: Mapping[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        self.pods.pop(uid, None)
        self.assumed.pop(uid, None)
        self.unschedulable_msg.pop(uid, None)
        lost = self.runners.get(uid)
        if lost is not None and lost.node in self.lost:
            return  # its kubelet is gone: the processes run on until recover_node
        runner = self.runners.pop(uid, None)
        if runner is not None:
            await runner.gone()
            same_name = any(r.ns == runner.ns and r.name == runner.name for r in self.runners.values())
            if not same_name:
                await asyncio.to_thread(shutil.rmtree, runner.log_dir, True)
        self._wake.set()

    # -------------------------------------------------------------------------------- scheduling

    async def admission_refusal(self, node: str, pod: Mapping[str, Any]) -> tuple[str, str] | None:
        """Fault injection: while the node's annotation REFUSE_ANNOTATION counts N > 0, the next N pods bound
        to it are refused at admission as a real kubelet refuses them (reason OutOfcpu), and N goes down by
        one each. A real kubelet does this when its own count of the node's pods (pods that just finished
        still count) lags the scheduler's; it cannot be caused on demand there."""
        obj = self.node_objs.get(node) or {}
        raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(REFUSE_ANNOTATION)
        try:
            left = int(raw) if raw is not None else 0
        except ValueError:
            return None
        if left <= 0:
            return None
        with contextlib.suppress(Exception):
            await self.api.merge_patch(f"/api/v1/nodes/{node}",
                                       {"metadata": {"annotations": {REFUSE_ANNOTATION: str(left - 1)}}})
        obj.setdefault("metadata", {}).setdefault("annotations", {})[REFUSE_ANNOTATION] = str(left - 1)
        requested = sum(_cpu_millis(((c.get("resources") or {}).get("requests") or {}).get("cpu"))
                        for c in (pod.get("spec") or {}).get("containers") or ())
        return "OutOfcpu", (f"Pod Node didn't have enough resource: cpu, requested: {requested}, used: 2000, "
                            "capacity: 2000")

    def _node_views(self) -> list[pr.NodeView]:
        views = []
        for name, cfg in sorted(self.nodes.items()):
            obj = self.node_objs.get(name)
            if obj is None:
                continue
            view = pr.NodeView.from_manifest(obj)
            views.append(pr.NodeView(name, view.labels, view.taints, view.unschedulable, cfg.pods))
        return views

    def _active(self, uid: str) -> str | None:
        """The node of a pod that holds room on it (bound or assumed, not finished), else None."""
        pod = self.pods[uid]
        node = (pod.get("spec") or {}).get("nodeName") or self.assumed.get(uid)
        if not node or (pod.get("status") or {}).get("phase") in TERMINAL:
            return None
        runner = self.runners.get(uid)
        if runner is not None and runner.finished.is_set():
            return None
        return str(node)

    def _load(self) -> dict[str, int]:
        load: dict[str, int] = {}
        for uid in self.pods:
            node = self._active(uid)
            if node:
                load[node] = load.get(node, 0) + 1
        return load

    async def _scheduler(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):  # not wait_for: see apiserver/gc.py
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._schedule_pending()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                self.log(f"scheduler: {e!r}")

    async def _schedule_pending(self) -> None:
        pending = [
            p
            for uid, p in self.pods.items()
            if not (p.get("spec") or {}).get("nodeName")
            and uid not in self.assumed
            and not p["metadata"].get("deletionTimestamp")
            and (p.get("spec") or {}).get("schedulerName", "default-scheduler") == "default-scheduler"
            and (p.get("status") or {}).get("phase", "Pending") == "Pending"
        ]
        if not pending:
            return
        pending.sort(
            key=lambda p: (
                -int((p.get("spec") or {}).get("priority") or 0),
                p["metadata"].get("creationTimestamp", ""),
                p["metadata"]["name"],
            )
        )
        nodes = self._node_views()
        # The load once per round, counted up as pods are bound: recounting every pod for every pending
        # pod made a round O(pods²) (seconds with ~1,000 pods pending). Capacity freed during the round
        # wakes the next one.
        load = self._load()
        unschedulable: list[tuple[dict[str, Any], str]] = []
        # Within a round load only grows, so a pod that did not fit explains every later pod that places
        # alike: with ~1,000 pods queued behind full nodes, one `schedule` per kind of pod, not per pod.
        no_fit: dict[str, str] = {}
        spread = _Spread(self.pods, self.assumed, lambda uid: self._active(uid))
        for pod in pending:
            key = pr.placement_key(pod)
            if key in no_fit:
                node, message = None, no_fit[key]
            else:
                node, message = pr.schedule(pod, nodes, load, spread.avoid(pod))
            uid = pod["metadata"]["uid"]
            if node is None:
                no_fit[key] = message
                if self.unschedulable_msg.get(uid) != message:
                    self.unschedulable_msg[uid] = message
                    unschedulable.append((pod, message))
                continue
            self.assumed[uid] = node
            load[node] = load.get(node, 0) + 1
            spread.bound(pod, node)
            try:
                await self._bind(pod, node)
            except ApiError as e:
                self.assumed.pop(uid, None)
                load[node] -= 1
                self.log(f"bind {pod['metadata']['name']}: {e}")
                continue
            self.unschedulable_msg.pop(uid, None)
            self.event(
                pod,
                "Normal",
                "Scheduled",
                f"Successfully assigned {pod['metadata']['namespace']}/{pod['metadata']['name']} to {node}",
                source="default-scheduler",
            )
        # After the binds (which must not wait behind hundreds of status writes), and concurrently; still
        # within the round, so a later round's bind of the same pod comes after its Unschedulable mark.
        await asyncio.gather(*(self._mark_unschedulable(p, m) for p, m in unschedulable))

    async def _bind(self, pod: Mapping[str, Any], node: str) -> None:
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        try:
            await self.api.create(f"/api/v1/namespaces/{ns}/pods/{name}/binding", binding)
        except ApiError as e:
            if e.status not in (404, 405):
                raise
            # No pods/binding on this server: set spec.nodeName (allowed once while empty); a vanished
            # pod makes this 404 as well.
            await self.api.merge_patch(f"/api/v1/namespaces/{ns}/pods/{name}", {"spec": {"nodeName": node}})
        # PodScheduled=True comes with the runner's first status report (it replaces the conditions).

    async def _mark_unschedulable(self, pod: Mapping[str, Any], message: str) -> None:
        meta = pod["metadata"]
        cond = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastProbeTime": None,
            "lastTransitionTime": now(),
        }
        with contextlib.suppress(ApiError):
            await self.api.merge_patch(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                {"status": {"phase": "Pending", "conditions": [cond]}},
            )
        self.event(pod, "Warning", "FailedScheduling", message, source="default-scheduler")

    # -------------------------------------------------------------------------------- shutdown

    async def shutdown(self) -> None:
        """Kill every pod process (no API updates: the cluster is going away)."""
        self.shutting_down = True
        for t in self._tasks:
            t.cancel()
        for r in list(self.runners.values()):
            r.stop()
        await asyncio.gather(*(r._kill_all(0) for r in self.runners.values()), return_exceptions=True)
        for r in list(self.runners.values()):
            if r.task is not None:
                r.task.cancel()
        await asyncio.gather(
            *(r.task for r in self.runners.values() if r.task is not None), return_exceptions=True
        )
        for t in list(self.background):
            t.cancel()
        await asyncio.gather(*self._tasks, *self.background, return_exceptions=True)
        if self._zygote is not None:
            await self._zygote.aclose()
        await self.api.close()
        # Volumes hold secret data: do not leave them behind (the processes using them are dead).
        await asyncio.to_thread(shutil.rmtree, self.root_dir / "pods", True)


class _Relist(Exception):
    pass


class KubeletThread:
    """A Kubelet on its own event loop in a daemon thread, with blocking controls for tests and the CLI."""

    def __init__(
        self,
        kubeconfig: Path,
        *,
        nodes: Sequence[NodeConfig],
        root_dir: Path,
        logs_dir: Path,
        path: str | None = None,
        verbose: bool = False,
        lease_seconds: float = LEASE_RENEW_SECONDS,
        status_report_seconds: float = NODE_STATUS_REPORT_SECONDS,
    ) -> None:
        self._args = (kubeconfig, nodes, root_dir, logs_dir, path, verbose)
        self._beats = (lease_seconds, status_report_seconds)
        self.loop = asyncio.new_event_loop()
        self.kubelet: Kubelet | None = None
        self._thread: threading.Thread | None = None
        self._main: asyncio.Future[None] | None = None

    def start(self, timeout: float = 60.0) -> None:
        kubeconfig, nodes, root_dir, logs_dir, path, verbose = self._args
        self._thread = threading.Thread(target=self.loop.run_forever, name="stagefleet-kubelet", daemon=True)
        self._thread.start()

        async def create() -> Kubelet:
            kubelet = Kubelet(
                KubeAPI(ClusterAccess.from_kubeconfig(kubeconfig)),
                nodes=nodes,
                root_dir=root_dir,
                logs_dir=logs_dir,
                path=path,
                verbose=verbose,
                lease_seconds=self._beats[0],
                status_report_seconds=self._beats[1],
            )
            self._main = asyncio.ensure_future(kubelet.run())
            return kubelet

        self.kubelet = self.call(create())
        assert self.kubelet is not None and self._main is not None
        main = self._main

        async def wait_ready() -> None:
            ready = asyncio.ensure_future(self.kubelet.ready.wait())  # type: ignore[union-attr]
            await asyncio.wait([ready, main], return_when=asyncio.FIRST_COMPLETED)
            if not ready.done():
                ready.cancel()
                raise RuntimeError(f"kubelet failed to start: {main.exception()!r}")

        self.call(wait_ready(), timeout)

    def call(self, coro: Any, timeout: float | None = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def lose_node(self, name: str) -> None:
        """Blocking `Kubelet.lose_node`."""
        assert self.kubelet is not None
        self.call(self.kubelet.lose_node(name))

    def recover_node(self, name: str) -> None:
        """Blocking `Kubelet.recover_node`."""
        assert self.kubelet is not None
        self.call(self.kubelet.recover_node(name))

    def stop(self) -> None:
        """Kill all pod processes, stop the kubelet, then the loop and its thread."""
        if self._thread is None:
            return
        if self.kubelet is not None:
            kubelet, main = self.kubelet, self._main

            async def shutdown() -> None:
                if main is not None:
                    main.cancel()
                    await asyncio.gather(main, return_exceptions=True)
                await kubelet.shutdown()

            with contextlib.suppress(Exception):
                self.call(shutdown(), timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        if not self._thread.is_alive():
            self.loop.close()
        self._thread = None


# ------------------------------------------------------------------------------------ standalone process

API_WAIT_SECONDS = 120.0  # how long a standalone kubelet waits at start for its kubeconfig and API server


class NotReachable(Exception):
    """The API server did not answer within the start-up wait."""


def _not_up_yet(e: BaseException) -> bool:
    """Worth waiting for: no kubeconfig yet, nothing listening, a timeout, a starting or overloaded server."""
    if isinstance(e, ApiError):
        return e.status in (429, 500, 502, 503, 504)
    return isinstance(e, FileNotFoundError | aiohttp.ClientConnectionError | TimeoutError | ConnectionError)


def _say(message: str) -> None:
    print(f"kubelet: {message}", file=sys.stderr, flush=True)


async def connect(kubeconfig: Path, wait: float) -> KubeAPI:
    """The API server of `kubeconfig`, once it answers ``GET /version``; while the kubeconfig is missing or
    the server is unreachable, retried with backoff for up to `wait` seconds (saying so once), then
    `NotReachable`. Other errors (a malformed kubeconfig, 401/403) are raised at once."""
    from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay, wait_exponential

    def waiting(state: RetryCallState) -> None:
        if state.attempt_number == 1:
            error = state.outcome.exception() if state.outcome is not None else None
            _say(f"waiting up to {wait:.0f} s for the API server of {kubeconfig} ({error!s:.200})")

    api: KubeAPI | None = None
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_not_up_yet),
            stop=stop_after_delay(wait),
            wait=wait_exponential(multiplier=0.1, max=2.0),
            before_sleep=waiting,
            reraise=True,
        ):
            with attempt:
                if api is not None:
                    await api.close()
                if not kubeconfig.read_text().strip():  # being written by whoever starts the API server
                    raise FileNotFoundError(f"{kubeconfig} is empty")
                api = KubeAPI(ClusterAccess.from_kubeconfig(kubeconfig))
                await api.request("GET", "/version", attempts=1)
                if attempt.retry_state.attempt_number > 1:
                    _say(f"the API server at {api.access.server} answers: joining")
    except BaseException as e:
        if api is not None:
            await api.close()
        if _not_up_yet(e):
            raise NotReachable(f"no API server answered for {kubeconfig} within {wait:.0f} s: {e}") from e
        raise
    assert api is not None
    return api


async def serve(
    kubeconfig: Path,
    *,
    nodes: Sequence[NodeConfig],
    root_dir: Path,
    logs_dir: Path,
    verbose: bool = False,
    api_wait: float = API_WAIT_SECONDS,
    stop: asyncio.Event | None = None,
) -> int:
    """A kubelet as a process: connect (waiting for the API server), run until `stop` (SIGTERM/SIGINT in
    `main`), then kill every pod process and remove the pods' directories and `root_dir` (when nothing else
    is in it). Pod logs stay: they are what the API server serves. The exit status: 0 once stopped, 1 when
    the API server never answered or the kubelet failed."""
    stop = stop or asyncio.Event()
    stopped = asyncio.ensure_future(stop.wait())
    connecting = asyncio.ensure_future(connect(kubeconfig, api_wait))
    await asyncio.wait({connecting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not connecting.done():
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        return 0
    try:
        api = connecting.result()
    except Exception as e:  # noqa: BLE001 - unreachable, a bad kubeconfig, refused: one line, no traceback
        stopped.cancel()
        _say(f"not started: {e}")
        return 1
    kubelet = Kubelet(api, nodes=nodes, root_dir=root_dir, logs_dir=logs_dir, verbose=verbose)
    running = asyncio.ensure_future(kubelet.run())
    try:
        await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (running, stopped):
            task.cancel()
        await asyncio.gather(running, stopped, return_exceptions=True)
        await kubelet.shutdown()
        with contextlib.suppress(OSError):
            root_dir.rmdir()  # empty once the pods' directories are gone; never anything it did not make
    if stop.is_set():
        _say("stopped: pod processes killed, pod directories removed")
        return 0
    error = running.exception() if not running.cancelled() else None
    _say(f"failed: {error!r}")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run a kubelet against any API server: `python -m stagefleet.devcluster.kubelet --kubeconfig F`.

    SIGTERM or SIGINT stops it cleanly (exit 0). Started before its API server, it waits for it."""
    parser = argparse.ArgumentParser(description="stagefleet dev-cluster local kubelet (a development tool)")
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--pods-per-node", type=int, default=8)
    parser.add_argument("--node-label", action="append", default=[], metavar="K=V")
    parser.add_argument("--root-dir", type=Path, required=True)
    parser.add_argument("--logs-dir", type=Path, required=True)
    parser.add_argument(
        "--api-wait",
        type=float,
        default=API_WAIT_SECONDS,
        metavar="SECONDS",
        help="at start, wait this long for the kubeconfig and its API server (default %(default)s)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    labels = dict(kv.split("=", 1) for kv in args.node_label)

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await serve(
            args.kubeconfig,
            nodes=node_configs(args.nodes, args.pods_per_node, labels),
            root_dir=args.root_dir,
            logs_dir=args.logs_dir,
            verbose=args.verbose,
            api_wait=args.api_wait,
            stop=stop,
        )

    return asyncio.run(run())

class _Spread:
    """Per scheduling round: node → how many active pods match each preferred anti-affinity selector seen
    (counted once per selector, then kept up to date as the round binds pods), so a round stays linear in
    the pods however many of them ask to be spread."""

    def __init__(self, pods: Mapping[str, Any], assumed: Mapping[str, str],
                 active: Callable[[str], str | None]) -> None:
        self._pods, self._assumed, self._active = pods, assumed, active
        self._counts: dict[str, tuple[str, dict[str, str], dict[str, int]]] = {}

    def _count(self, namespace: str, labels: dict[str, str]) -> dict[str, int]:
        key = json.dumps([namespace, labels], sort_keys=True)
        if key not in self._counts:
            per_node: dict[str, int] = {}
            for uid, p in self._pods.items():
                meta = p.get("metadata") or {}
                own = meta.get("labels") or {}
                if meta.get("namespace") != namespace or any(own.get(k) != v for k, v in labels.items()):
                    continue
                node = self._active(uid)
                if node:
                    per_node[node] = per_node.get(node, 0) + 1
            self._counts[key] = (namespace, labels, per_node)
        return self._counts[key][2]

    def avoid(self, pod: Mapping[str, Any]) -> dict[str, int]:
        namespace = str((pod.get("metadata") or {}).get("namespace") or "default")
        out: dict[str, int] = {}
        for weight, labels in pr.preferred_anti_affinity(pod):
            for node, n in self._count(namespace, labels).items():
                out[node] = out.get(node, 0) + weight * n
        return out

    def bound(self, pod: Mapping[str, Any], node: str) -> None:
        meta = pod.get("metadata") or {}
        own = meta.get("labels") or {}
        for namespace, labels, per_node in self._counts.values():
            if meta.get("namespace") == namespace and all(own.get(k) == v for k, v in labels.items()):
                per_node[node] = per_node.get(node, 0) + 1


if __name__ == "__main__":
    sys.exit(main())
