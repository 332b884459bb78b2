"""Runs last (file order): the session's secrets canary — the value of Secret `canary` in every reliability
namespace, mounted by builds that use secret `tok` — appears in no registry blob, pod log, pod or
ConfigMap, event, ImageBuild status, or operator log, across everything the suite did (operator kills,
lost nodes and pods, registry outages, API faults, malformed inputs). A build of its own makes sure there
is something to look at when this file runs alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2e.oci import blobs_containing

from .conftest import (
    GROUP,
    PLURAL,
    VERSION,
    Api,
    Evidence,
    OperatorFactory,
    RCluster,
    assert_clean_success,
    fake_manifest,
    terminal,
)

pytestmark = [pytest.mark.cluster]

SECRET_DOCKERFILE = """FROM busybox:1.36 AS a
RUN --mount=type=secret,id=tok test -s /run/secrets/tok
FROM busybox:1.36 AS final
COPY --from=a /etc/hostname /x
RUN --mount=type=secret,id=tok true
"""


def test_canary_is_nowhere(
    api: Api, make_operator: OperatorFactory, rcluster: RCluster, records: Path, evidence: Evidence
) -> None:
    op = make_operator(sleep=0.2)
    api.create(fake_manifest("canary", SECRET_DOCKERFILE))
    obj = terminal(api, "canary", op)
    assert_clean_success(obj, api, rcluster.ledger, records)
    pods = api.pods()
    assert pods and all(
        any(v.get("secret", {}).get("secretName") == "canary" for v in p["spec"].get("volumes") or ())
        for p in pods
    ), "the builds under test did not mount the canary Secret: this check would prove nothing"
    op.stop()

    needle = evidence.canary
    hits: list[str] = []
    for log in evidence.operator_logs:
        if log.exists() and needle in log.read_text(errors="replace"):
            hits.append(f"operator log {log}")
    files = [f for d in rcluster.log_dirs for f in d.rglob("*") if f.is_file()]
    assert any(f.suffix == ".log" for f in files), f"no pod or component logs in {rcluster.log_dirs}"
    for f in files:
        if needle.encode() in f.read_bytes():
            hits.append(f"log {f}")
    for data_dir in evidence.registries:
        hits += [f"registry blob {b}" for b in blobs_containing(data_dir, needle.encode())]
    for ns in evidence.namespaces:
        a = Api(rcluster.cluster.kubeconfig, ns)
        try:
            ibs = a.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
            cms = json.loads(a.core.list_namespaced_config_map(ns, _preload_content=False).data)["items"]
            for what, items in (
                ("ImageBuild", ibs),
                ("event", a.events()),
                ("pod", a.pods()),
                ("ConfigMap", cms),
            ):
                for item in items:
                    if needle in json.dumps(item):
                        hits.append(f"{what} {ns}/{item['metadata']['name']}")
        finally:
            a.close()
    assert hits == [], hits
