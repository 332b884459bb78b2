"""The only module that talks to the Kubernetes API (besides kopf's own watching).

Synchronous (the official client), called from worker threads. Transient errors (429, 5xx, dropped
connections) are retried with exponential backoff; AlreadyExists on create and NotFound on delete are
success, because every write the operator makes is idempotent by design; a 409 Conflict on the status
write surfaces as `Conflict` so the reconciler re-reads and recomputes instead of overwriting; a create the
API server refuses (400, 403, 422: admission, quota, an invalid field) surfaces as `Refused`, with the API's
reason and message, so that the reconciler records it instead of failing the pass.
"""

from __future__ import annotations

import json
import logging
import secrets as _random
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from stagefleet.controller.events import EventCorrelator
from stagefleet.controller.podspec import API_VERSION, GROUP, KIND, LABEL_UID

log = logging.getLogger("stagefleet.kube")

PLURAL = "imagebuilds"
VERSION = API_VERSION.split("/")[1]
TRANSIENT = {429, 500, 502, 503, 504}


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The RFC 7386 merge patch turning ``old`` into ``new``: removed keys become null, nested objects are
    diffed (a merge patch would otherwise keep their stale keys), lists and scalars are replaced."""
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for k, v in new.items():
        before = old.get(k)
        if isinstance(v, Mapping) and isinstance(before, Mapping):
            sub = merge_patch(before, v)
            if sub:
                patch[k] = sub
        elif k not in old or before != v:
            patch[k] = v
    return patch


class Conflict(Exception):
    """The object changed since it was read: re-read, recompute, re-apply."""


REFUSED = {400, 403, 422}


class Forbidden(Exception):
    """The operator may not do this (403): e.g. list Nodes without the chart's node rule."""


class Expired(Exception):
    """A watch's resourceVersion is too old (410 Gone): list again."""


class Refused(Exception):
    """The API server refused to create an object: 400, 403 or 422 (an invalid field, admission: a missing
    ServiceAccount, Pod Security, a ResourceQuota, a webhook, or the operator's own RBAC). Sending the same
    request again helps only once something in the cluster changes, so the caller records why and waits.

    ``reason`` and ``message`` are the API's (its Status body), e.g. Forbidden and
    ``pods "x" is forbidden: error looking up service account ns/sa: serviceaccount "sa" not found``.
    """

    def __init__(self, kind: str, name: str, code: int, reason: str, message: str) -> None:
        super().__init__(f"{kind} {name} refused ({code} {reason}): {message}")
        self.kind = kind
        self.name = name
        self.code = code
        self.reason = reason
        self.message = message


def _api_status(e: ApiException) -> tuple[str, str]:
    """(reason, message) of a failed call: the API's Status body, else the HTTP reason phrase and body."""
    raw = e.body.decode(errors="replace") if isinstance(e.body, bytes) else str(e.body or "")
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status":
        return str(body.get("reason") or e.reason or ""), str(body.get("message") or raw)
    return str(e.reason or ""), raw.strip()[:1024]


def _transient(e: BaseException) -> bool:
    if isinstance(e, ApiException):
        return e.status in TRANSIENT or e.status == 0
    return isinstance(e, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


_retry = retry(
    retry=retry_if_exception(_transient),
    stop=stop_after_attempt(8),
    wait=wait_exponential(multiplier=0.1, max=5),
    reraise=True,
)


def _create_conflict(e: BaseException) -> bool:
    """A 409 on create that is not AlreadyExists (a ResourceQuota's usage update lost a race, say): the
    object was not created, and the next try usually succeeds."""
    return isinstance(e, ApiException) and e.status == 409 and _api_status(e)[0] not in ("AlreadyExists", "")


_retry_create = retry(
    retry=retry_if_exception(lambda e: _transient(e) or _create_conflict(e)),
    stop=stop_after_attempt(8),
    wait=wait_exponential(multiplier=0.1, max=5),
    reraise=True,
)


# (connect, read) seconds for every call: without one, a request whose answer never comes (a half-open
# connection, a wedged proxy) blocks its reconcile thread forever, and with it every later pass of that build.
REQUEST_TIMEOUT = (10.0, 60.0)


class _TimeoutApiClient(client.ApiClient):
    """The client's generated calls pass ``_request_timeout=None`` (wait forever) unless told otherwise."""

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("_request_timeout") is None:
            kwargs["_request_timeout"] = REQUEST_TIMEOUT
        return super().call_api(*args, **kwargs)


def _json(resp: Any) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(resp.data or b"{}"))


class Kube:
    """Typed wrappers for exactly the calls the operator makes."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        # Untyped on purpose: we pass and receive plain JSON dicts (_preload_content=False), not models.
        self.core: Any = client.CoreV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.events = EventCorrelator()

    @classmethod
    def connect(cls, kubeconfig: str | None = None) -> Kube:
        """The named kubeconfig, else in-cluster (a pod's service account), else ``~/.kube/config``: the
        source kopf's login uses too (`stagefleet.controller.login`)."""
        from stagefleet.controller.login import load_configuration

        configuration, _ = load_configuration(kubeconfig)
        return cls(_TimeoutApiClient(configuration))

    # --- ImageBuilds -------------------------------------------------------------------------------------

    @_retry
    def get_imagebuild(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return _json(
                self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, _preload_content=False
                )
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    @_retry
    def _patch_status(self, namespace: str, name: str, body: dict[str, Any]) -> str | None:
        try:
            resp = self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                body,
                _content_type="application/merge-patch+json",
                _preload_content=False,
            )
        except ApiException as e:
            if e.status == 409:
                raise Conflict(f"imagebuild {namespace}/{name} changed") from e
            if e.status == 404:
                return None  # deleted meanwhile: nothing to report on
            raise
        version = (_json(resp).get("metadata") or {}).get("resourceVersion")
        return str(version) if version else None

    @_retry
    def patch_imagebuild(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """A JSON merge patch of an ImageBuild's spec or metadata (a platform's build following its parent's
        spec, `platforms`); gone meanwhile is fine."""
        try:
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, dict(patch),
                _content_type="application/merge-patch+json", _preload_content=False,
            )
        except ApiException as e:
            if e.status != 404:
                raise

    def write_status(self, ib: Mapping[str, Any], new: Mapping[str, Any]) -> str | bool:
        """Replace the status as a JSON merge patch guarded by the resourceVersion that was read.

        Keys that disappear are sent as null (a merge patch otherwise keeps them). Returns False when the
        status is unchanged (no write at all, so idle reconciles cost reads only), else the ImageBuild's new
        resourceVersion (True when the answer did not name it): a second write in the same pass (the
        reconciler's write-ahead of a pod's creation token) is guarded by it.
        """
        old = ib.get("status") or {}
        if dict(old) == dict(new):
            return False
        patch = merge_patch(old, new)
        meta = ib.get("metadata") or {}
        body = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "status": patch}
        return self._patch_status(meta["namespace"], meta["name"], body) or True

    # --- Worker pods and their inputs --------------------------------------------------------------------

    @_retry
    def list_worker_pods(self, namespace: str, uid: str) -> list[dict[str, Any]]:
        resp = self.core.list_namespaced_pod(
            namespace, label_selector=f"{LABEL_UID}={uid}", _preload_content=False
        )
        return list(_json(resp).get("items") or [])

    @_retry
    def list_imagebuild_names(self, namespace: str) -> set[str]:
        """The names of every ImageBuild in ``namespace`` (the operator's memory sweep, `tracking`)."""
        resp = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _preload_content=False
        )
        return {str((o.get("metadata") or {}).get("name")) for o in _json(resp).get("items") or []}

    @_retry
    def list_worker_pod_uids(self, namespace: str) -> set[str]:
        """The uids of every worker pod in ``namespace``, of any build (the memory sweep, `tracking`)."""
        resp = self.core.list_namespaced_pod(namespace, label_selector=LABEL_UID, _preload_content=False)
        return {str((p.get("metadata") or {}).get("uid")) for p in _json(resp).get("items") or []}

    @_retry_create
    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create a Pod or ConfigMap: the object as created, None when it already exists (its deterministic
        name says: ours). Raises `Refused` when the API server refuses it (400, 403, 422); a 409 other than
        AlreadyExists is retried like a transient error (the object does not exist)."""
        ns = manifest["metadata"]["namespace"]
        try:
            if manifest["kind"] == "Pod":
                resp = self.core.create_namespaced_pod(ns, manifest, _preload_content=False)
            elif manifest["kind"] == "ConfigMap":
                resp = self.core.create_namespaced_config_map(ns, manifest, _preload_content=False)
            elif manifest["kind"] == "ImageBuild":  # a platform's build of a multi-platform one (`platforms`)
                resp = self.custom.create_namespaced_custom_object(
                    GROUP, VERSION, ns, PLURAL, manifest, _preload_content=False
                )
            else:
                raise ValueError(f"unexpected kind {manifest['kind']}")
        except ApiException as e:
            if e.status == 409 and not _create_conflict(e):
                return None
            if e.status in REFUSED:
                reason, message = _api_status(e)
                raise Refused(
                    str(manifest["kind"]), str(manifest["metadata"]["name"]), int(e.status), reason, message
                ) from e
            raise
        return _json(resp)

    @_retry
    def delete_pod(self, namespace: str, name: str, grace_seconds: int | None = None) -> None:
        try:
            self.core.delete_namespaced_pod(
                name,
                namespace,
                grace_period_seconds=grace_seconds,
                propagation_policy="Background",
                _preload_content=False,
            )
        except ApiException as e:
            if e.status != 404:
                raise

    @_retry
    def delete_imagebuild(self, namespace: str, name: str, uid: str) -> None:
        """Delete one ImageBuild, only if it still is the object ``uid`` (a new one of the same name is not
        this build); its pods follow through their owner references and the operator's cleanup."""
        body = {"preconditions": {"uid": uid}, "propagationPolicy": "Background"}
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, body=body,
                                                        _preload_content=False)
        except ApiException as e:
            if e.status not in (404, 409):  # gone already, or replaced by a new object of that name
                raise

    @_retry
    def delete_configmaps(self, namespace: str, uid: str) -> None:
        try:
            self.core.delete_collection_namespaced_config_map(
                namespace, label_selector=f"{LABEL_UID}={uid}", _preload_content=False
            )
        except ApiException as e:
            if e.status != 404:
                raise

    @_retry
    def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        """The key names of a Secret (None: no such Secret). Values are dropped unread."""
        try:
            resp = self.core.read_namespaced_secret(name, namespace, _preload_content=False)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        data = _json(resp)
        return set(data.get("data") or {}) | set(data.get("stringData") or {})

    @_retry
    def read_secret_value(self, namespace: str, name: str, key: str) -> bytes | None:
        """A git deploy key, needed by the operator itself to pin the revision. Never logged."""
        import base64

        try:
            data = (
                _json(self.core.read_namespaced_secret(name, namespace, _preload_content=False)).get("data")
                or {}
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        value = data.get(key)
        return base64.b64decode(value) if isinstance(value, str) else None

    # --- Nodes (an informer-style cache: one list, then a watch; never a GET per pass) -------------------

    @_retry
    def list_nodes(self) -> tuple[list[dict[str, Any]], str]:
        """Every Node and the list's resourceVersion (to watch from); `Forbidden` without the RBAC."""
        try:
            data = _json(self.core.list_node(_preload_content=False))
        except ApiException as e:
            if e.status == 403:
                raise Forbidden(_api_status(e)[1]) from e
            raise
        return list(data.get("items") or []), str((data.get("metadata") or {}).get("resourceVersion") or "")

    def watch_nodes(self, resource_version: str, timeout_seconds: int = 300) -> Iterator[tuple[str, Any]]:
        """(type, object) of the Node events after ``resource_version`` (BOOKMARKs included), until the
        server ends the watch after ``timeout_seconds``; `Expired` when the version is too old."""
        from kubernetes.watch.watch import iter_resp_lines

        resp = self.core.list_node(
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_seconds,
            _preload_content=False,
            _request_timeout=(REQUEST_TIMEOUT[0], timeout_seconds + 30),
        )
        try:
            lines: Iterator[str] = iter_resp_lines(resp)  # type: ignore[no-untyped-call]
            for line in lines:
                if not line.strip():
                    continue
                event = json.loads(line)
                etype, obj = str(event.get("type")), event.get("object") or {}
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        raise Expired(str(obj.get("message") or "410 Gone"))
                    raise RuntimeError(f"node watch: {obj.get('code')} {obj.get('message')}")
                yield etype, obj
        finally:
            resp.release_conn()

    # --- Events ------------------------------------------------------------------------------------------

    def event(self, ib: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """A Kubernetes Event on the ImageBuild; a repeat within the correlator's window raises the first
        one's count instead (`events.EventCorrelator`). Best effort: a lost event must not fail a pass."""
        meta = ib.get("metadata") or {}
        namespace = str(meta.get("namespace"))
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        message = message[:1024]
        key = (namespace, str(meta.get("uid")), type_, reason, message)
        try:
            seen = self.events.repeat_of(key, time.monotonic())
            if seen is not None:
                try:
                    self._patch_event(namespace, seen.name, {"count": seen.count, "lastTimestamp": now})
                    return
                except ApiException as e:
                    if e.status != 404:
                        raise
                    self.events.forget(key)  # expired meanwhile: a new one below
            name = f"{meta.get('name')}.{_random.token_hex(8)}"
            body = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": namespace},
                "involvedObject": {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": meta.get("name"),
                    "namespace": namespace,
                    "uid": meta.get("uid"),
                    "resourceVersion": meta.get("resourceVersion"),
                },
                "reason": reason,
                "message": message,
                "type": type_,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
                "source": {"component": "stagefleet-operator"},
                "reportingComponent": "stagefleet-operator",
            }
            self._create_event(namespace, body)
            self.events.created(key, name, now, time.monotonic())
        except Exception as e:  # noqa: BLE001 (events are advisory)
            log.warning("event %s on %s/%s not recorded: %s", reason, namespace, meta.get("name"), e)

    @_retry
    def _patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.core.patch_namespaced_event(name, namespace, patch, _preload_content=False,
                                         _content_type="application/merge-patch+json")

    @_retry
    def _create_event(self, namespace: str, body: dict[str, Any]) -> None:
        self.core.create_namespaced_event(namespace, body, _preload_content=False)
