"""`stagefleet operator`: run the ImageBuild operator (kopf underneath) against the current kubeconfig.

Stateless: everything it knows lives in ImageBuild status and worker pods, so it can be killed and
restarted at any moment. Logs are JSON lines on stderr; metrics are served for Prometheus.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "operator",
        help="run the ImageBuild operator",
        description="Watch ImageBuilds and build them with one worker pod per plan group.",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable); default: all namespaces",
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)"
    )
    p.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, then KUBECONFIG / ~/.kube/config)"
    )
    p.add_argument(
        "--metrics-port", type=int, default=8080, help="Prometheus metrics port; 0 disables (8080)"
    )
    p.add_argument("--metrics-address", default="0.0.0.0", help="address the metrics server binds (0.0.0.0)")
    p.add_argument(
        "--worker-command",
        default="stagefleet-worker",
        help="command of the worker container, shell-split (default: stagefleet-worker)",
    )
    p.add_argument(
        "--builder-image", default=None, help="default image of worker pods when spec.builderImage is unset"
    )
    p.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="registry the workers may reach over plain HTTP (repeatable)",
    )
    p.add_argument("--concurrency", type=int, default=8, help="reconcile passes running at once (8)")
    p.add_argument(
        "--retry-backoff",
        type=float,
        default=5.0,
        help="seconds before the first retry of a failed group; doubles per attempt (5)",
    )
    p.add_argument(
        "--peering",
        default=None,
        help="kopf peering object name for several operator replicas (default: standalone)",
    )
    p.add_argument("--log-format", choices=("json", "text"), default="json", help="log format (json)")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.kubeconfig:
        # Before importing kubernetes: its default kubeconfig path is read from the env at import time;
        # kopf's login and our client then read the same file.
        os.environ["KUBECONFIG"] = args.kubeconfig
    import kopf

    from stagefleet.controller import handlers  # noqa: F401  (registers the kopf handlers)
    from stagefleet.controller.kube import Kube
    from stagefleet.controller.metrics import Metrics
    from stagefleet.controller.podspec import WorkerConfig
    from stagefleet.controller.reconciler import OperatorConfig, Reconciler
    from stagefleet.controller.spec import DEFAULT_BUILDER_IMAGE

    kopf.configure(
        verbose=args.verbose,
        debug=False,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL,
    )
    logging.getLogger("stagefleet").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        # kopf logs every handler call at INFO; our reconciler logs the transitions that matter.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)

    insecure = [
        *args.insecure_registry,
        *(r for r in os.environ.get("STAGEFLEET_INSECURE_REGISTRIES", "").split(",") if r),
    ]
    worker = WorkerConfig(
        command=tuple(shlex.split(args.worker_command)),
        builder_image=args.builder_image or DEFAULT_BUILDER_IMAGE,
        insecure_registries=tuple(dict.fromkeys(insecure)),
    )
    metrics = Metrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port, args.metrics_address)
    kube = Kube.connect(args.kubeconfig or os.environ.get("KUBECONFIG"))
    reconciler = Reconciler(
        kube,
        OperatorConfig(worker=worker, backoff_base=args.retry_backoff),
        metrics,
        threads=max(1, args.concurrency),
    )

    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="stagefleet.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="stagefleet.io", key="last-handled-configuration"
    )
    settings.posting.enabled = False  # our own Events say what happened; kopf's would repeat log lines
    settings.networking.error_backoffs = [0.5, 1, 2, 5, 10]
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = max(4, args.concurrency)
    settings.batching.worker_limit = max(32, args.concurrency * 4)

    logging.getLogger("stagefleet.operator").info(
        "stagefleet operator starting: %s, worker %s, metrics port %s",
        "namespaces " + ",".join(args.namespace) if args.namespace else "all namespaces",
        " ".join(worker.command),
        args.metrics_port or "off",
    )
    kopf.run(
        settings=settings,
        standalone=args.peering is None,
        peering_name=args.peering,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        memo=kopf.Memo(reconciler=reconciler),
    )
    return 0
