"""`stagefleet demo`: the main job on the embedded default, from nothing to a built image and back.

Starts a throwaway registry with the offline busybox base image, the dev cluster and the operator, applies
`examples/seed/imagebuild.yaml` with the real kubectl, follows the ImageBuild to Succeeded while printing
each stage's progress, then prints the image digest and the parallel speed-up, and tears everything down.
`--local` builds the same seed with `stagefleet build` instead, without a cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
SEED_DIR = REPO / "examples" / "seed"
SEED_MANIFEST = SEED_DIR / "imagebuild.yaml"
TERMINAL = ("Succeeded", "Failed", "Cancelled")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="run the seed example end to end on a throwaway dev cluster",
        description="Registry + dev cluster + operator, then the seed ImageBuild applied with kubectl and "
                    "followed to Succeeded; prints the digest and the parallel speed-up, then cleans up.")
    p.add_argument("--local", action="store_true",
                   help="build the seed with `stagefleet build` (local worker processes), no cluster")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds to wait for the build (default 600)")
    p.add_argument("--workdir",
                   help="keep all state (logs, kubeconfig, registry data) here instead of a temp dir")
    p.add_argument("--sleep", default="3",
                   help="the seed's SLEEP build arg: seconds each parallel stage sleeps")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------------------ pure


@dataclass(frozen=True)
class Speedup:
    stage_seconds: float   # the stages' durations added up: the build done one stage after another
    wall_seconds: float    # first stage start to last stage end
    ratio: float


def _seconds(stage: Mapping[str, Any]) -> float | None:
    from stagefleet.commands.status import parse_time

    d = stage.get("duration")
    if isinstance(d, int | float):
        return float(d)
    if isinstance(d, str):
        with contextlib.suppress(ValueError):
            return float(d.rstrip("s"))
    start, end = parse_time(stage.get("startTime")), parse_time(stage.get("completionTime"))
    return (end - start).total_seconds() if start and end else None


def speedup(status: Mapping[str, Any]) -> Speedup | None:
    """Sum of stage durations over the wall time of the stages — what running them side by side bought.

    Wall time is measured from the first stage's start to the last stage's completion (the ImageBuild's
    planning and the operator's own latency are not the workers' doing).
    """
    from stagefleet.commands.status import parse_time

    stages = [s for s in status.get("stages") or [] if isinstance(s, Mapping)]
    secs = [x for x in (_seconds(s) for s in stages) if x is not None]
    starts = [t for s in stages if (t := parse_time(s.get("startTime")))]
    ends = [t for s in stages if (t := parse_time(s.get("completionTime")))]
    if not secs or not starts or not ends:
        return None
    wall = (max(ends) - min(starts)).total_seconds()
    if wall <= 0:
        return None
    total = sum(secs)
    return Speedup(total, wall, total / wall)


def overlaps(status: Mapping[str, Any]) -> list[tuple[str, str, float]]:
    """Pairs of stages whose run windows overlapped, with the overlap in seconds: the parallelism, seen."""
    from stagefleet.commands.status import parse_time

    windows = []
    for s in status.get("stages") or []:
        if isinstance(s, Mapping):
            start, end = parse_time(s.get("startTime")), parse_time(s.get("completionTime"))
            if start and end:
                windows.append((str(s.get("name")), start, end))
    out = []
    for i, (a, a0, a1) in enumerate(windows):
        for b, b0, b1 in windows[i + 1:]:
            secs = (min(a1, b1) - max(a0, b0)).total_seconds()
            if secs > 0:
                out.append((a, b, secs))
    return out


def stage_states(status: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """stage → (phase, where) for progress lines; `where` names the pod and its node once known."""
    out = {}
    for s in status.get("stages") or []:
        if isinstance(s, Mapping) and s.get("name"):
            where = ""
            if s.get("pod"):
                where = f"pod {s['pod']}" + (f" on {s['node']}" if s.get("node") else "")
            out[str(s["name"])] = (str(s.get("phase") or "Pending"), where)
    return out


def progress_lines(before: Mapping[str, tuple[str, str]], after: Mapping[str, tuple[str, str]],
                   elapsed: float) -> list[str]:
    """One line per stage whose phase changed (or that appeared)."""
    width = max((len(n) for n in after), default=0)
    out = []
    for name, (phase, where) in after.items():
        if before.get(name, ("", ""))[0] != phase:
            out.append(f"{elapsed:7.1f}s  {name:<{width}}  {phase:<9}  {where}".rstrip())
    return out


def seed_manifest(doc: Mapping[str, Any], *, base_image: str, output: str, sleep: str) -> dict[str, Any]:
    """The seed ImageBuild pointed at this demo's registry: base image, output image, stage sleep."""
    out: dict[str, Any] = {k: v for k, v in doc.items()}
    spec = dict(out.get("spec") or {})
    spec["buildArgs"] = {**(spec.get("buildArgs") or {}), "BASE": base_image, "SLEEP": str(sleep)}
    spec["output"] = {**(spec.get("output") or {}), "image": output}
    out["spec"] = spec
    return out


# ------------------------------------------------------------------------------------------------ I/O


def kubectl_binary() -> str:
    """The real kubectl: the one scripts/setup.sh installs, else the one on PATH."""
    tool = REPO / ".tools" / "bin" / "kubectl"
    if tool.is_file() and os.access(tool, os.X_OK):
        return str(tool)
    found = shutil.which("kubectl")
    if not found:
        raise RuntimeError("kubectl not found (scripts/setup.sh installs it into .tools/bin)")
    return found


def say(message: str) -> None:
    print(message, flush=True)


@contextlib.contextmanager
def registry_with_base(workdir: Path) -> Iterator[tuple[str, str]]:
    """A throwaway registry holding the busybox base image; yields (host, base image ref)."""
    from stagefleet.commands.build import push_base_image
    from stagefleet.localregistry import LocalRegistry

    reg = LocalRegistry(workdir / "registry")
    reg.start()
    try:
        base = push_base_image(reg.host)
        say(f"registry   {reg.host} (base image {base})")
        yield reg.host, base
    finally:
        reg.stop()


def operator_argv(kubeconfig: Path, registry: str, metrics_port: int) -> list[str]:
    """`stagefleet operator` as a child process: worker pods may push to the plain-HTTP registry."""
    return [sys.executable, "-m", "stagefleet.cli", "operator", "--kubeconfig", str(kubeconfig),
            "--insecure-registry", registry, "--metrics-address", "127.0.0.1",
            "--metrics-port", str(metrics_port), "--log-format", "text"]


@contextlib.contextmanager
def operator_process(kubeconfig: Path, registry: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run the operator against the dev cluster; stop it (TERM, then KILL) on the way out."""
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), STAGEFLEET_INSECURE_REGISTRIES=registry)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    from stagefleet.localregistry import free_port

    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(operator_argv(kubeconfig, registry, port), env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    say(f"operator   pid {proc.pid} (log {log}, metrics http://127.0.0.1:{port}/metrics)")
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json,application/vnd.oci.image.index.v1+json,"
                  "application/vnd.docker.distribution.manifest.v2+json,"
                  "application/vnd.docker.distribution.manifest.list.v2+json")


def registry_serves(image: str, digest: str) -> bool:
    """Whether the (plain-HTTP) registry has the manifest `digest` in the image's repository."""
    import urllib.error
    import urllib.request

    host, _, rest = image.partition("/")
    repo = rest.split("@", 1)[0]
    if ":" in repo.rsplit("/", 1)[-1]:
        repo = repo.rsplit(":", 1)[0]
    req = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{digest}", method="HEAD",
                                 headers={"Accept": MANIFEST_TYPES})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def follow(api: Any, namespace: str, name: str, timeout: float,
           operator: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Poll the ImageBuild until it is over, printing every stage transition."""
    from kubernetes.client.exceptions import ApiException

    from stagefleet.commands.status import get_imagebuild

    t0 = time.monotonic()
    seen: dict[str, tuple[str, str]] = {}
    phase = None
    obj: dict[str, Any] = {}
    while time.monotonic() - t0 < timeout:
        try:
            obj = get_imagebuild(api, namespace, name)
        except ApiException as e:
            if e.status != 404:
                raise
        status = obj.get("status") or {}
        if status.get("phase") != phase:
            phase = status.get("phase")
            say(f"{time.monotonic() - t0:7.1f}s  imagebuild/{name}  {phase or 'Pending'}")
        states = stage_states(status)
        for line in progress_lines(seen, states, time.monotonic() - t0):
            say(line)
        seen = states
        if phase in TERMINAL:
            return obj
        if operator.poll() is not None:
            raise RuntimeError(f"the operator exited with status {operator.returncode}")
        time.sleep(0.5)
    raise TimeoutError(f"imagebuild/{name} not finished after {timeout:.0f}s (phase {phase})")


def run_cluster_demo(args: argparse.Namespace, workdir: Path) -> int:
    import yaml

    from stagefleet.commands.status import kube_client, render
    from stagefleet.devcluster.cluster import DevCluster

    doc = yaml.safe_load(SEED_MANIFEST.read_text())
    name, namespace = doc["metadata"]["name"], doc["metadata"].get("namespace", "default")
    kubectl = kubectl_binary()
    with contextlib.ExitStack() as stack:
        registry, base = stack.enter_context(registry_with_base(workdir))
        cluster = DevCluster(workdir / "cluster")
        cluster.start()
        stack.callback(cluster.stop)
        say(f"cluster    {cluster.server} (kubeconfig {cluster.kubeconfig})")
        log = workdir / "operator.log"
        operator = stack.enter_context(operator_process(cluster.kubeconfig, registry, log))
        output = f"{registry}/stagefleet/seed:demo"
        manifest = workdir / "seed.yaml"
        seed = seed_manifest(doc, base_image=base, output=output, sleep=args.sleep)
        manifest.write_text(yaml.safe_dump(seed, sort_keys=False))
        say(f"$ kubectl apply -f {SEED_MANIFEST.relative_to(REPO)}   (BASE and output pointed at {registry})")
        applied = subprocess.run(
            [kubectl, "--kubeconfig", str(cluster.kubeconfig), "apply", "-f", str(manifest)],
            capture_output=True, text=True, env=dict(os.environ, KUBECACHEDIR=str(workdir / "kube-cache")))
        sys.stdout.write(applied.stdout)
        if applied.returncode != 0:
            say(f"error: kubectl apply failed: {applied.stderr.strip()}")
            return 1
        api, _ = kube_client(str(cluster.kubeconfig), namespace)
        try:
            obj = follow(api, namespace, name, args.timeout, operator)
        except (TimeoutError, RuntimeError) as e:
            say(f"error: {e}\n--- operator log (last lines) ---\n{tail(log)}")
            return 1
        now = _dt.datetime.now(_dt.UTC)
        say("")
        for line in render(obj, now):
            say(line)
        status = obj.get("status") or {}
        if status.get("phase") != "Succeeded":
            say(f"\nerror: the build ended {status.get('phase')}: {status.get('message') or ''}\n"
                f"--- operator log (last lines) ---\n{tail(log)}")
            return 1
        image = status.get("image") or {}
        digest = image.get("digest")
        served = bool(digest) and registry_serves(output, str(digest))
        say(f"\nimage      {image.get('name') or output}@{digest}"
            f"{'  (served by the registry)' if served else '  (NOT found in the registry!)'}")
        sp = speedup(status)
        if sp is not None:
            say(f"speed-up   {sp.ratio:.2f}x: stages took {sp.stage_seconds:.1f}s in total, "
                f"{sp.wall_seconds:.1f}s from the first stage's start to the last one's end")
        for a, b, secs in overlaps(status):
            say(f"parallel   {a} and {b} ran side by side for {secs:.1f}s")
        say("tearing down: operator, dev cluster, registry")
        return 0 if served else 1
    return 1  # pragma: no cover


def run_local_demo(args: argparse.Namespace, workdir: Path) -> int:
    from stagefleet import cli

    with registry_with_base(workdir) as (registry, base):
        say(f"$ stagefleet build {SEED_DIR.relative_to(REPO)} --registry {registry} "
            f"--build-arg BASE={base} --build-arg SLEEP={args.sleep}")
        argv: Sequence[str] = ["build", str(SEED_DIR), "--registry", registry,
                               "--build-arg", f"BASE={base}", "--build-arg", f"SLEEP={args.sleep}",
                               "--tag", f"{registry}/stagefleet/seed:demo"]
        code = cli.main(list(argv))
        say("tearing down: registry")
        return code


def run(args: argparse.Namespace) -> int:
    if not SEED_MANIFEST.is_file():
        print(f"error: {SEED_MANIFEST} not found (run the demo from a checkout of the repository)",
              file=sys.stderr)
        return 2
    own = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="stagefleet-demo-")) if own else Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return run_local_demo(args, workdir) if args.local else run_cluster_demo(args, workdir)
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
