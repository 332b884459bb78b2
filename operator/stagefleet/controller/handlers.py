"""kopf registrations, nothing else: every handler hands the ImageBuild to the `Reconciler` (in ``memo``).

* events of ImageBuilds: reconcile when one appears (also at start-up: resume) or gets a new generation;
  remove its pods when it is deleted (no finalizer, so deletion never waits for the operator).
* events of worker pods (label-selected): reconcile their ImageBuild when something it reads changed;
  delete orphans.
* a requeue loop (started with the operator): retries after backoff, the build timeout, missing Secrets.
* the nodes' readiness (a list+watch thread started with the operator, `controller.nodewatch`): a node
  going NotReady or Ready triggers the builds with pods on it.
* a liveness probe (served only with ``--health-port``): the number of builds in flight.
* the login: the credentials our own client uses too (`stagefleet.controller.login`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from stagefleet.controller import login as credentials
from stagefleet.controller import polling, runs
from stagefleet.controller.podspec import GROUP, LABEL_UID
from stagefleet.controller.reconciler import Reconciler

VERSION = "v1alpha1"
PLURAL = "imagebuilds"


def _reconciler(memo: Any) -> Reconciler:
    r = memo.reconciler
    assert isinstance(r, Reconciler)
    return r


@kopf.on.event(GROUP, VERSION, PLURAL)
async def imagebuild_event(
    *, type: str | None, body: Any, namespace: str | None, name: str, uid: str, memo: Any, **_: Any
) -> None:
    """Created, resumed (listed at start-up), spec changed, deleted.

    A plain event handler rather than kopf's create/update/resume/delete handlers: those keep per-object
    state in annotations (more patches per ImageBuild), while a new generation is already visible as
    ``metadata.generation != status.observedGeneration`` (our own status writes change neither), a rebuild
    request as an annotation value the status has not answered (`runs`), and a deletion as a DELETED event
    or a ``deletionTimestamp`` (when another finalizer holds the object).
    """
    r = _reconciler(memo)
    ns = namespace or "default"
    meta = body.get("metadata") or {}
    parent = next((o.get("name") for o in meta.get("ownerReferences") or ()
                   if o.get("kind") == "ImageBuild" and o.get("controller")), None)
    if parent:  # a platform's build (`platforms`): every change of it is its parent's news
        await r.trigger(ns, str(parent))
    if type == "DELETED":
        await _in_thread(r.cleanup, ns, uid, dict(body))  # (the body: its last state, for its stage tags)
        r.forget(ns, name, uid)
        return
    status = body.get("status") or {}
    if (
        type in (None, "ADDED")
        or meta.get("deletionTimestamp")
        or runs.unanswered(meta, status)  # a spec edit, or a stagefleet.io/rebuild annotation
        or polling.unanswered(meta, status)  # a stagefleet.io/resolve annotation
    ):
        await r.trigger(ns, name)


@kopf.on.event("", "v1", "pods", labels={LABEL_UID: kopf.PRESENT})
async def worker_pod_event(*, type: str, body: Any, namespace: str | None, memo: Any, **_: Any) -> None:
    r = _reconciler(memo)
    owner = next(
        (o for o in body.get("metadata", {}).get("ownerReferences") or () if o.get("kind") == "ImageBuild"),
        None,
    )
    if owner is None:
        return
    if type in (None, "ADDED") and await _in_thread(r.delete_orphan, body):
        return
    if r.pod_changed(body, deleted=type == "DELETED"):
        await r.trigger(namespace or "default", str(owner.get("name")))


@kopf.on.login()
def login(*, settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """A client-certificate, token, exec-plugin or basic-auth kubeconfig, or the pod's service account: the
    same source as the reconciler's client (kopf's own fallback would prefer in-cluster even when the
    operator was given a kubeconfig)."""
    return credentials.login(credentials.kubeconfig_from_env(), trust_env=settings.networking.trust_env)


@kopf.on.startup()
async def start_requeue_loop(*, memo: Any, **_: Any) -> None:
    """Retries after backoff, timeouts and Secrets being waited for are due at times the reconciler
    computes; one loop triggers them. (A kopf timer would do it per object, but kopf guards timers with a
    finalizer and annotations on every ImageBuild: three more writes per build, and deletion waiting for
    the operator.)"""
    memo.requeue_task = asyncio.create_task(_reconciler(memo).requeue_forever())
    # The nodes' readiness (one list+watch in a thread): a pod on a node NotReady for --node-lost-after
    # seconds is lost and its group retried elsewhere (controller.nodeloss).
    _reconciler(memo).watch_nodes(asyncio.get_running_loop())


@kopf.on.probe(id="buildsInFlight")
def builds_in_flight(*, memo: Any, **_: Any) -> int:
    """Part of the /healthz answer (``--health-port``): ImageBuilds this operator has not seen end."""
    return _reconciler(memo).metrics.in_flight()


@kopf.on.cleanup()
async def stop_requeue_loop(*, memo: Any, **_: Any) -> None:
    task = getattr(memo, "requeue_task", None)
    if task is not None:
        task.cancel()
    nodes = _reconciler(memo).nodes
    if nodes is not None:
        nodes.stop()


async def _in_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
