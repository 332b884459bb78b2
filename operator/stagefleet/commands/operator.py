"""`stagefleet operator`: run the ImageBuild operator (kopf underneath) against the current kubeconfig.

Stateless: everything it knows lives in ImageBuild status and worker pods, so it can be killed and
restarted at any moment. Logs are JSON lines on stderr; metrics are served for Prometheus.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import shlex
import signal
import sys
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
        "--kubeconfig", help="kubeconfig file (default: KUBECONFIG, else in-cluster, else ~/.kube/config)"
    )
    p.add_argument(
        "--metrics-port", type=int, default=8080, help="Prometheus metrics port; 0 disables (8080)"
    )
    p.add_argument(
        "--metrics-address", default="0.0.0.0", help="address the metrics and health servers bind (0.0.0.0)"
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=0,
        help="serve GET /healthz for liveness/readiness probes on this port (0: off, the default). It is "
        "answered from the operator's event loop, so a wedged operator fails it (/metrics runs in a thread)",
    )
    p.add_argument(
        "--worker-command",
        default="stagefleet-worker",
        help="command of the worker container, shell-split (default: stagefleet-worker)",
    )
    # Worker defaults: each flag beats its environment variable (how the Helm chart passes them), which
    # beats the built-in default; see stagefleet.controller.workerdefaults.
    p.add_argument(
        "--builder-image",
        default=None,
        help="default image of worker pods when spec.builderImage is unset (env STAGEFLEET_BUILDER_IMAGE)",
    )
    p.add_argument(
        "--builder-image-pull-policy",
        default=None,
        choices=("Always", "IfNotPresent", "Never"),
        help="imagePullPolicy of worker pods (env STAGEFLEET_BUILDER_IMAGE_PULL_POLICY; IfNotPresent)",
    )
    p.add_argument(
        "--worker-resources",
        default=None,
        metavar="JSON",
        help="default ResourceRequirements of worker pods when spec.resources sets none "
        "(env STAGEFLEET_WORKER_RESOURCES)",
    )
    p.add_argument(
        "--worker-pod-security-context",
        default=None,
        metavar="JSON",
        help="PodSecurityContext of worker pods (env STAGEFLEET_WORKER_POD_SECURITY_CONTEXT)",
    )
    p.add_argument(
        "--worker-security-context",
        default=None,
        metavar="JSON",
        help="SecurityContext of the worker container (env STAGEFLEET_WORKER_SECURITY_CONTEXT)",
    )
    p.add_argument(
        "--worker-storage-driver",
        default=None,
        choices=("vfs", "overlay"),
        help="buildah storage driver in workers, as their STAGEFLEET_STORAGE_DRIVER "
        "(env STAGEFLEET_WORKER_STORAGE_DRIVER; default: the worker's own)",
    )
    p.add_argument(
        "--worker-fuse-resource",
        default=None,
        metavar="RESOURCE",
        help="extended resource giving workers /dev/fuse, requested and limited at 1 "
        "(env STAGEFLEET_WORKER_FUSE_RESOURCE; default: none)",
    )
    p.add_argument(
        "--worker-active-deadline-seconds",
        default=None,
        metavar="SECONDS",
        help="cap of each worker pod's activeDeadlineSeconds; 0: the ImageBuild's timeout only "
        "(env STAGEFLEET_WORKER_ACTIVE_DEADLINE_SECONDS)",
    )
    p.add_argument(
        "--worker-host-network",
        default=None,
        metavar="true|false",
        help="run worker pods in the node's network namespace, e.g. to reach a registry only the node "
        "reaches (env STAGEFLEET_WORKER_HOST_NETWORK; default false)",
    )
    p.add_argument(
        "--worker-priority-class",
        default=None,
        metavar="NAME",
        help="PriorityClass of every worker pod, e.g. to let builds yield to serving workloads "
        "(env STAGEFLEET_WORKER_PRIORITY_CLASS; default none: the cluster's default priority)",
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
        "--source-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up resolving a build's git source (ls-remote and the Dockerfile fetch, retries included) "
        "after this long; it runs off the reconcile threads, so a slow host delays only its own build (60)",
    )
    p.add_argument(
        "--source-resolutions",
        type=int,
        default=64,
        metavar="N",
        help="git sources resolved at once, in all (64); more wait for a slot",
    )
    p.add_argument(
        "--source-resolutions-per-namespace",
        type=int,
        default=8,
        metavar="N",
        help="git sources of one namespace resolved at once (8): a namespace's black-holed sources "
        "queue behind each other, never in front of another namespace's",
    )
    p.add_argument(
        "--max-worker-pods",
        type=int,
        default=0,
        metavar="N",
        help="worker pods running at once in all (0: no cap beyond each build's maxParallelPods); free "
        "slots go to the namespace running the fewest, then by spec.priority and age within it",
    )
    p.add_argument(
        "--no-platform-emulation",
        dest="platform_emulation",
        action="store_false",
        help="refuse a spec.platforms entry no Ready node's architecture matches, instead of building it "
        "under emulation (buildah --platform; nodes need binfmt_misc handlers, e.g. qemu-user-static)",
    )
    p.add_argument(
        "--retry-backoff",
        type=float,
        default=5.0,
        help="seconds before the first retry of a failed group; doubles per attempt (5)",
    )
    p.add_argument(
        "--default-ttl-after-finished",
        type=int,
        default=0,
        metavar="SECONDS",
        help="delete a finished ImageBuild (and so its pods) this long after it finished, unless its "
        "spec.ttlSecondsAfterFinished says otherwise; 0 keeps finished builds (the default)",
    )
    p.add_argument(
        "--keep-failed-seconds",
        default=None,
        metavar="SECONDS",
        help="keep the worker pods and the stage result tags of a Failed or Cancelled build this long "
        "after it finished, for debugging, then delete them (env STAGEFLEET_KEEP_FAILED_SECONDS; 3600). "
        "A Succeeded build's stage tags are deleted at once",
    )
    p.add_argument(
        "--keep-succeeded-pods-seconds",
        default=None,
        metavar="SECONDS",
        help="keep the worker pods of a Succeeded build this long after it finished (e.g. for `stagefleet "
        "logs`), then delete them (env STAGEFLEET_KEEP_SUCCEEDED_PODS_SECONDS; 0: at once)",
    )
    p.add_argument(
        "--plans-per-process",
        type=int,
        default=200,
        metavar="N",
        help="plan Dockerfiles in a child process replaced after N plans (BuildKit's parser binding leaks "
        "memory on every parse; the child costs ~40 MB); 0 plans in the operator's own process (200)",
    )
    p.add_argument(
        "--memory-sweep-seconds",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="this often, drop the in-memory state of ImageBuilds and worker pods that no longer exist "
        "(their DELETED events lost with a watch cut); 0 never (300)",
    )
    p.add_argument(
        "--node-lost-after",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a worker pod whose node has not been Ready this long (or that is stuck Terminating this long) "
        "is lost: force-deleted, its group retried on another node (60)",
    )
    p.add_argument(
        "--early-start",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start a group's pod while its upstream groups still build; its worker waits for their "
        "results in the registry, so pod and worker start overlap the upstream build (on)",
    )
    p.add_argument(
        "--peering",
        default=None,
        help="kopf peering object name for several operator replicas (default: standalone)",
    )
    # The admin's policy over spec fields (stagefleet.controller.policy): flag > environment variable (the
    # chart's policy.* values) > safe default.
    from stagefleet.controller.policy import HELP, SETTINGS

    for name, (flag, var) in SETTINGS.items():
        metavar = "JSON" if name == "max_stage_resources" else "LIST"
        p.add_argument(flag, dest=f"policy_{name}", metavar=metavar, help=f"{HELP[name]} (env {var})")
    p.add_argument("--log-format", choices=("json", "text"), default="json", help="log format (json)")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    p.set_defaults(func=run)


def worker_flags(args: argparse.Namespace) -> dict[str, str | None]:
    """The worker-default flags of ``args``, keyed like workerdefaults.WorkerDefaults."""
    return {
        "builder_image": args.builder_image,
        "image_pull_policy": args.builder_image_pull_policy,
        "resources": args.worker_resources,
        "pod_security_context": args.worker_pod_security_context,
        "security_context": args.worker_security_context,
        "storage_driver": args.worker_storage_driver,
        "fuse_resource": args.worker_fuse_resource,
        "active_deadline_seconds": args.worker_active_deadline_seconds,
        "host_network": args.worker_host_network,
        "priority_class_name": args.worker_priority_class,
    }


def seconds_setting(flag: str, value: str | None, var: str, default: float) -> float:
    """A number of seconds >= 0 from its flag, else its environment variable, else ``default``; ValueError
    naming the flag or variable when malformed."""
    name, text = (flag, value) if value is not None else (var, os.environ.get(var))
    if text is None or not text.strip():
        return default
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"{name}: {text!r} is not a number of seconds >= 0")
    return seconds


def run(args: argparse.Namespace) -> int:
    from stagefleet.controller.policy import SETTINGS, PolicyError, policy_from
    from stagefleet.controller.stagetags import DEFAULT_KEEP_FAILED_SECONDS
    from stagefleet.controller.workerdefaults import WorkerDefaultsError, worker_defaults

    try:
        defaults = worker_defaults(os.environ, worker_flags(args))
        policy = policy_from(os.environ, {name: getattr(args, f"policy_{name}") for name in SETTINGS})
        keep_failed = seconds_setting("--keep-failed-seconds", args.keep_failed_seconds,
                                      "STAGEFLEET_KEEP_FAILED_SECONDS", DEFAULT_KEEP_FAILED_SECONDS)
        keep_succeeded_pods = seconds_setting(
            "--keep-succeeded-pods-seconds", args.keep_succeeded_pods_seconds,
            "STAGEFLEET_KEEP_SUCCEEDED_PODS_SECONDS", 0.0)
    except (WorkerDefaultsError, PolicyError, ValueError) as e:
        print(f"stagefleet operator: {e}", file=sys.stderr)
        return 2
    if args.kubeconfig:
        # Before importing kubernetes: its default kubeconfig path is read from the env at import time;
        # kopf's login and our client then read the same file.
        os.environ["KUBECONFIG"] = args.kubeconfig
    # `kill -USR2 <operator>` writes every thread's Python stack to stderr: what a stuck pass waits on.
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    import kopf

    from stagefleet.controller import handlers  # noqa: F401  (registers the kopf handlers)
    from stagefleet.controller.config import OperatorConfig
    from stagefleet.controller.kube import Kube
    from stagefleet.controller.metrics import Metrics
    from stagefleet.controller.model import plan_dockerfile
    from stagefleet.controller.planner import Planner
    from stagefleet.controller.reconciler import Reconciler

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
    worker = defaults.worker_config(
        command=tuple(shlex.split(args.worker_command)),
        insecure_registries=tuple(dict.fromkeys(insecure)),
    )
    metrics = Metrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port, args.metrics_address)
    kube = Kube.connect(args.kubeconfig or os.environ.get("KUBECONFIG"))
    reconciler = Reconciler(
        kube,
        OperatorConfig(
            worker=worker,
            backoff_base=args.retry_backoff,
            early_start=args.early_start,
            node_lost_after=max(0.0, args.node_lost_after),
            policy=policy,
            default_ttl_after_finished=max(0, args.default_ttl_after_finished),
            keep_failed_seconds=keep_failed,
            keep_succeeded_pods_seconds=keep_succeeded_pods,
            source_timeout=max(1.0, args.source_timeout),
            source_resolutions=max(1, args.source_resolutions),
            source_resolutions_per_namespace=max(1, args.source_resolutions_per_namespace),
            sweep_seconds=max(0.0, args.memory_sweep_seconds),
            max_worker_pods=max(0, args.max_worker_pods),
            platform_emulation=args.platform_emulation,
        ),
        metrics,
        threads=max(1, args.concurrency),
        planner=Planner(args.plans_per_process).plan if args.plans_per_process > 0 else plan_dockerfile,
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
    # No kopf worker limit: kopf keeps one worker per object until it idles 5 s, so a cap made the
    # ImageBuilds beyond it wait in 5-second steps (100 at once: 15 s instead of 0.5 s to all be seen).
    settings.batching.worker_limit = None

    logging.getLogger("stagefleet.operator").info(
        "stagefleet operator starting: %s, worker %s (image %s, %s, storage driver %s), metrics port %s, "
        "health port %s",
        "namespaces " + ",".join(args.namespace) if args.namespace else "all namespaces",
        " ".join(worker.command),
        worker.builder_image,
        worker.image_pull_policy,
        worker.storage_driver or "worker default",
        args.metrics_port or "off",
        args.health_port or "off",
    )
    health = f"http://{args.metrics_address}:{args.health_port}/healthz" if args.health_port else None
    # Probes come every few seconds: neither their access log nor kopf's "Activity ... succeeded" per probe
    # run (kopf reruns probe handlers at most every 10 s and caches the answer) belongs in the log.
    for name in ("aiohttp.access", "kopf.activities.probe"):
        logging.getLogger(name).setLevel(logging.WARNING)
    kopf.run(
        settings=settings,
        standalone=args.peering is None,
        peering_name=args.peering,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        memo=kopf.Memo(reconciler=reconciler),
        liveness_endpoint=health,
    )
    return 0
