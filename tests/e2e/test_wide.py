"""A 2,000-stage Dockerfile: the API server accepts the operator's (summarised) status, and the operator reads
it back on its next passes (the compressed plan, the stages it did not list).

The build waits for a Secret its stages mount (none exists), so it stays Stalled with every stage planned
and no worker pod: what is tested is the status, not 2,000 builds. tests/controller/test_status_size.py
follows such a build to its end through the pure core.
"""

from __future__ import annotations

import json
import time

import pytest

from stagefleet.localregistry import LocalRegistry

from .conftest import Kubectl, Operator, inline_manifest, wait_until

pytestmark = [pytest.mark.cluster]

STAGES = 2000


def wide_dockerfile(n: int) -> str:
    lines = []
    for i in range(n):
        lines += [f"FROM busybox AS s{i:04d}", "RUN --mount=type=secret,id=t true"]
    lines += ["FROM busybox AS final", *(f"COPY --from=s{i:04d} / /{i}" for i in range(n))]
    return "\n".join(lines) + "\n"


def test_a_2000_stage_builds_status_is_accepted_and_read_back(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry
) -> None:
    manifest = inline_manifest("wide", wide_dockerfile(STAGES), registry.host,
                               secrets=[{"id": "t", "secretRef": {"name": "absent", "key": "v"}}])
    # (create, not apply: apply would copy the 170 KB Dockerfile into an annotation as well)
    kubectl.run("create", "-f", "-", input=json.dumps(manifest))

    def planned() -> bool:
        return (kubectl.ib("wide").get("status") or {}).get("stagesTotal") == STAGES + 1

    wait_until(planned, "the wide build planned and its status written", operator, timeout=180)
    status = kubectl.ib("wide")["status"]
    assert status["stagesSummarized"] is True
    assert status["stageCounts"] == {"Waiting": STAGES + 1}
    assert status["progress"] == f"0/{STAGES + 1}"
    assert status["plan"]["groupsTotal"] == STAGES + 1 and "groups" not in status["plan"]
    assert len(json.dumps(status)) < 256 * 1024
    stalled = {c["type"]: c for c in status["conditions"]}["Stalled"]
    assert stalled["status"] == "True" and stalled["reason"] == "SecretNotFound"
    assert kubectl.pods("wide") == []

    time.sleep(7)  # the next passes (every 5 s while a Secret is missing) read that status back
    again = kubectl.ib("wide")["status"]
    assert again["stageCounts"] == status["stageCounts"] and again["plan"] == status["plan"]
    assert "Traceback" not in operator.tail(400)
    kubectl.run("delete", "imagebuild", "wide", "--wait=true")
