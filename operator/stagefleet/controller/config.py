"""The operator's settings, from its command line: one frozen value that every part of the reconciler
reads. Apart from `reconciler` so that the parts it wires can take it without importing their owner."""

from __future__ import annotations

from dataclasses import dataclass, field

from stagefleet.controller import nodeloss, stagetags, tracking
from stagefleet.controller.podspec import WorkerConfig
from stagefleet.controller.policy import Policy


@dataclass(frozen=True)
class OperatorConfig:
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    backoff_base: float = 5.0
    # Resolving a git source (ls-remote + one-file fetch, retries included) runs in a thread of its own,
    # never in a reconcile thread, and gives up after this many seconds (--source-timeout).
    source_timeout: float = 60.0
    source_attempts: int = 3
    # At most this many sources resolve at once, and this many of one namespace's (`sourceslots`); a
    # source's timeout counts from when it gets its slot.
    source_resolutions: int = 64
    source_resolutions_per_namespace: int = 8
    early_start: bool = True  # start the next wave's pods while their upstreams build (status.decide)
    # A status change that only reports progress (urgency.urgent_change) waits up to this long, so that the
    # transitions of sibling groups share one write; 0 writes every change at once.
    status_coalesce: float = 1.0
    # A worker pod whose node has not been Ready this long, or that is stuck Terminating this long, is lost:
    # force-deleted, its group retried elsewhere (controller.nodeloss; --node-lost-after).
    node_lost_after: float = nodeloss.DEFAULT_GRACE_SECONDS
    # The admin's limits on what a spec may ask for (builder image, ServiceAccount, tolerations, ...).
    policy: Policy = field(default_factory=Policy)
    # Seconds after which a finished ImageBuild without its own spec.ttlSecondsAfterFinished is deleted
    # (controller.retention); 0 keeps finished builds.
    default_ttl_after_finished: int = 0
    # A finished build's stage tags and worker pods go (controller.stagetags): a Failed or Cancelled build's
    # this long after it finished (--keep-failed-seconds), a Succeeded build's tags at once and its pods
    # after keep_succeeded_pods_seconds (--keep-succeeded-pods-seconds).
    keep_failed_seconds: float = stagetags.DEFAULT_KEEP_FAILED_SECONDS
    keep_succeeded_pods_seconds: float = 0.0
    # How often the in-memory entries of builds and pods are checked against what exists (controller.tracking:
    # a DELETED event lost with a watch cut must not keep them forever); 0: never.
    sweep_seconds: float = tracking.SWEEP_SECONDS
    # At most this many worker pods run at once in all, shared fairly between namespaces
    # (controller.workerqueue; --max-worker-pods); 0: no cap beyond each build's maxParallelPods.
    max_worker_pods: int = 0
    # A platform of spec.platforms with no Ready node of its architecture is built under emulation on the
    # nodes there are (buildah --platform; the nodes need binfmt_misc handlers); False refuses such builds
    # (--no-platform-emulation).
    platform_emulation: bool = True
