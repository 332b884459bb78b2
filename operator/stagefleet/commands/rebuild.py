"""`stagefleet rebuild NAME`: run an ImageBuild again without editing its spec.

It sets the ``stagefleet.io/rebuild`` annotation to the current time, as ``flux reconcile`` sets
``reconcile.fluxcd.io/requestedAt``; the operator starts a new run for every new value
(docs/operator.md, "Running a build again"). Same as
``kubectl annotate --overwrite imagebuild/NAME stagefleet.io/rebuild="$(date -u +%FT%TZ)"``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
from typing import Any

from stagefleet.commands.status import GROUP, PLURAL, VERSION, add_kube_args, kube_client, report_failure
from stagefleet.controller.runs import ANNOTATION_REBUILD


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "rebuild",
        help="run an ImageBuild again without editing its spec",
        description="Set the stagefleet.io/rebuild annotation to the current time: the operator starts a "
        "new run.",
    )
    p.add_argument("name", help="ImageBuild name")
    add_kube_args(p)
    p.set_defaults(func=run)


def request_patch(now: _dt.datetime) -> dict[str, Any]:
    """The merge patch that asks for a new run (a new value each time: the time to the microsecond)."""
    value = now.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"metadata": {"annotations": {ANNOTATION_REBUILD: value}}}


def run(args: argparse.Namespace) -> int:
    from kubernetes import client

    try:
        api, ns = kube_client(args.kubeconfig, args.namespace)
        patch = request_patch(_dt.datetime.now(_dt.UTC))
        custom = client.CustomObjectsApi(api)
        custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, args.name, patch)
    except Exception as e:  # not found, refused; kubeconfig missing, server unreachable
        return report_failure(e, args.name, args.namespace)
    value = patch["metadata"]["annotations"][ANNOTATION_REBUILD]
    print(f"imagebuild.stagefleet.io/{args.name} annotated {ANNOTATION_REBUILD}={value}")
    return 0
