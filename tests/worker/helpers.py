"""Running the real worker as a process, and reading images back out of the real registry."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORKER = [sys.executable, "-m", "stagefleet.worker.main"]


@dataclass
class WorkerRun:
    code: int
    stdout: str
    stderr: str
    result: dict[str, Any]

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


def run_worker(args: Sequence[str], *, registry_host: str, tmp: Path,
               env: dict[str, str] | None = None) -> WorkerRun:
    """One worker invocation, with its temp files (and default fresh storage root) under `tmp`."""
    tmp.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "TMPDIR": str(tmp), "STAGEFLEET_INSECURE_REGISTRIES": registry_host,
                "STAGEFLEET_PUSH_BACKOFF": "0.1", **(env or {})}
    proc = subprocess.run([*WORKER, *args], env=full_env, capture_output=True, text=True, timeout=300)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    return WorkerRun(proc.returncode, proc.stdout, proc.stderr, json.loads(last))


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains `text`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def http_json(url: str, accept: str | None = None) -> Any:
    req = urllib.request.Request(url)
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def http_bytes(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        data: bytes = resp.read()
        return data


MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json,"
                  "application/vnd.docker.distribution.manifest.v2+json")


def manifest(registry_host: str, repo: str, ref: str) -> dict[str, Any]:
    m: dict[str, Any] = http_json(f"http://{registry_host}/v2/{repo}/manifests/{ref}", MANIFEST_TYPES)
    return m


def image_files(registry_host: str, repo: str, ref: str) -> dict[str, bytes]:
    """Regular files of an image (layers applied in order), read straight from the registry API."""
    m = manifest(registry_host, repo, ref)
    files: dict[str, bytes] = {}
    for layer in m["layers"]:
        blob = http_bytes(f"http://{registry_host}/v2/{repo}/blobs/{layer['digest']}")
        if blob[:2] == b"\x1f\x8b":
            blob = gzip.decompress(blob)
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            for member in tar.getmembers():
                name = "/" + member.name.lstrip("./")
                if member.isfile():
                    f = tar.extractfile(member)
                    files[name] = f.read() if f else b""
    return files


def image_config(registry_host: str, repo: str, ref: str) -> bytes:
    m = manifest(registry_host, repo, ref)
    return http_bytes(f"http://{registry_host}/v2/{repo}/blobs/{m['config']['digest']}")


def split_ref(ref: str) -> tuple[str, str, str]:
    """"host:port/repo/name:tag" or "...@sha256:x" → (host, repo, tag-or-digest)."""
    host, _, rest = ref.partition("/")
    if "@" in rest:
        repo, _, tag = rest.partition("@")
    else:
        repo, _, tag = rest.rpartition(":")
    return host, repo, tag


def skopeo_inspect(ref: str) -> dict[str, Any]:
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    data: dict[str, Any] = json.loads(out)
    return data


def seed_args(base_image: str) -> list[str]:
    return ["--build-arg", f"BASE={base_image}", "--build-arg", "SLEEP=0"]


def write_context(directory: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    return directory
