"""Re-running a build without editing its spec (docs/operator.md, "Running a build again"): a new value of
the ``stagefleet.io/rebuild`` annotation starts a new run of the same generation, on both tiers, with the
real builder and registry.

The build fetches a file from a server the test controls, so its first run fails for a reason outside the
spec (the file is missing: a build error, Failed at once). Once the file is there, annotating the
ImageBuild runs it again: a new run with its own pods, the same ``metadata.generation`` and
``observedGeneration`` (GitOps tools see no spec drift), the new run number and the answered value in
status. A second rebuild of the now unchanged stages reuses their stored results and starts no pod.
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from stagefleet.localregistry import LocalRegistry

from .conftest import Kubectl, Operator, inline_manifest, wait_for
from .oci import image_files, manifest_digest

pytestmark = [pytest.mark.cluster, pytest.mark.builder]

TERMINAL = ("Succeeded", "Failed", "Cancelled")


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A plain HTTP server on loopback (reachable from worker pods on both tiers, as the git daemon is):
    (the directory it serves, its port)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def run_ended(number: int) -> Any:
    return lambda o: (o.get("status") or {}).get("run") == number and o["status"].get("phase") in TERMINAL


def test_a_rebuild_annotation_runs_a_failed_build_again_without_a_spec_edit(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str, web: tuple[Path, int]
) -> None:
    root, port = web
    dockerfile = (
        f"FROM {base_image} AS fetch\n"
        f"RUN wget -q -O /flag http://127.0.0.1:{port}/flag\n"
        f"FROM {base_image}\n"
        "COPY --from=fetch /flag /flag\n"
    )
    kubectl.apply(inline_manifest("again", dockerfile, registry.host))
    first = wait_for(kubectl, operator, "again", run_ended(1), "run 1 to end")
    st1 = first["status"]
    assert st1["phase"] == "Failed", st1.get("message")
    assert st1["observedGeneration"] == 1 and "rebuild" not in st1

    (root / "flag").write_text("fixed outside the spec\n")
    kubectl.run("annotate", "imagebuild", "again", "stagefleet.io/rebuild=first")
    # `stagefleet status -w` follows the new run over the API server's watch until it ends (not at once:
    # the Failed run 1 it sees first has an unanswered rebuild request).
    watched = subprocess.run(
        [sys.executable, "-m", "stagefleet.cli", "status", "again", "-w", "-n", kubectl.namespace],
        env=kubectl.env(), capture_output=True, text=True, timeout=300,
    )
    assert watched.returncode == 0, (watched.stdout[-2000:], watched.stderr[-2000:])
    assert f"imagebuild {kubectl.namespace}/again: Succeeded" in watched.stdout, watched.stdout[-2000:]
    second = wait_for(kubectl, operator, "again", run_ended(2), "run 2 to end")
    st2 = second["status"]
    assert st2["phase"] == "Succeeded", st2.get("message")
    assert second["metadata"]["generation"] == 1
    assert st2["observedGeneration"] == 1 and st2["rebuild"] == "first"
    assert all(c["observedGeneration"] == 1 for c in st2["conditions"]), st2["conditions"]
    built = {s["name"]: s for s in st2["stages"]}
    assert built["fetch"]["pod"].startswith("again-2-") and built["fetch"]["attempts"] == 1, built["fetch"]
    files = image_files(registry.host, "e2e/again", "latest")
    assert files["/flag"] == b"fixed outside the spec\n"
    digest = st2["image"]["digest"]
    assert manifest_digest(registry.host, "e2e/again", "latest") == digest
    said = [(e["reason"], e["message"]) for e in kubectl.events()
            if e["involvedObject"].get("name") == "again" and e["reason"] == "RunStarted"]
    assert said == [("RunStarted", "rebuild requested (stagefleet.io/rebuild='first'): run 2 starts")], said

    # `stagefleet rebuild` sets a new value (the time): it runs again; every stage is unchanged, so
    # their stored results are used and no pod starts.
    cli = subprocess.run(
        [sys.executable, "-m", "stagefleet.cli", "rebuild", "again", "-n", kubectl.namespace],
        env=kubectl.env(), capture_output=True, text=True, timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    asked = kubectl.json("get", "imagebuild", "again")["metadata"]["annotations"]["stagefleet.io/rebuild"]
    assert asked != "first" and asked in cli.stdout, (asked, cli.stdout)
    third = wait_for(kubectl, operator, "again", run_ended(3), "run 3 to end")
    st3 = third["status"]
    assert st3["phase"] == "Succeeded" and st3["rebuild"] == asked, st3.get("message")
    assert third["metadata"]["generation"] == 1 and st3["observedGeneration"] == 1
    assert all("reused" in s and not s.get("pod") for s in st3["stages"]), st3["stages"]
    assert st3["image"]["digest"] == digest
    assert not [p for p in kubectl.pods("again") if p["metadata"]["name"].startswith("again-3-")]
