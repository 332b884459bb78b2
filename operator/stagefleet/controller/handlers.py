"""kopf registrations, nothing else: every handler hands the ImageBuild to the `Reconciler` (in ``memo``).

* create/update/resume on ImageBuilds: reconcile (update fires on spec changes, i.e. a new generation).
* delete on ImageBuilds (no finalizer, so deletion never waits for the operator): remove the pods.
* events of worker pods (label-selected): reconcile their ImageBuild at once; delete orphans.
* a timer on unfinished ImageBuilds: retries after backoff, the build timeout, missing Secrets that appear.
"""

from __future__ import annotations

from typing import Any

import kopf

from stagefleet.controller.podspec import GROUP, LABEL_UID
from stagefleet.controller.reconciler import Reconciler
from stagefleet.controller.status import TERMINAL

VERSION = "v1alpha1"
PLURAL = "imagebuilds"


def _reconciler(memo: Any) -> Reconciler:
    r = memo.reconciler
    assert isinstance(r, Reconciler)
    return r


def _unfinished(body: Any, **_: Any) -> bool:
    status = body.get("status") or {}
    meta = body.get("metadata") or {}
    return not (
        status.get("phase") in TERMINAL and status.get("observedGeneration") == meta.get("generation")
    )


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def imagebuild_changed(*, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    await _reconciler(memo).trigger(namespace or "default", name)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
async def imagebuild_deleted(*, namespace: str | None, name: str, uid: str, memo: Any, **_: Any) -> None:
    r = _reconciler(memo)
    await _in_thread(r.cleanup, namespace or "default", uid)
    r.forget(namespace or "default", name)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def imagebuild_event(
    *, type: str, namespace: str | None, name: str, uid: str, memo: Any, **_: Any
) -> None:
    # kopf calls on.delete only while the object still exists; a plain DELETED event is handled here.
    if type == "DELETED":
        r = _reconciler(memo)
        await _in_thread(r.cleanup, namespace or "default", uid)
        r.forget(namespace or "default", name)


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
    await r.trigger(namespace or "default", str(owner.get("name")))


@kopf.timer(GROUP, VERSION, PLURAL, interval=1.0, sharp=False, when=_unfinished)
async def imagebuild_tick(*, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    r = _reconciler(memo)
    if r.due(namespace or "default", name):
        await r.trigger(namespace or "default", name)


async def _in_thread(fn: Any, *args: Any) -> Any:
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
