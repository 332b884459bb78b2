"""HTTP layer: URL parsing, query options, list/watch streaming, Table output and error rendering."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from . import discovery, errors, logs, openapi, protobuf, scale
from .api import Core, DeleteOptions, WriteOptions
from .errors import ApiError
from .faults import REASONS, Faults
from .resources import ResourceType
from .selectors import label_equalities, parse_field_selector, parse_label_selector
from .storage import Event, Obj
from .table import to_table, wants_table

log = logging.getLogger("stagefleet.devcluster.apiserver")
BOOKMARK_SECONDS = 5.0
DEFAULT_WATCH_SECONDS = 1800.0


@dataclass
class Target:
    group: str
    version: str
    namespace: str
    plural: str
    name: str
    sub: str
    watch: bool


def parse_path(path: str, core: Core) -> Target | None:
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    watch = False
    if rest[:1] == ["watch"]:
        watch, rest = True, rest[1:]
    ns = ""
    if len(rest) >= 3 and rest[0] == "namespaces":
        is_ns_sub = len(rest) == 3 and core.registry.get(group, version, rest[2]) is None
        if not is_ns_sub:
            ns, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    return Target(
        group, version, ns, rest[0], rest[1] if len(rest) > 1 else "", rest[2] if len(rest) > 2 else "", watch
    )


def respond(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_response(e: ApiError) -> web.Response:
    headers = {"Retry-After": "1"} if e.code == 429 else None
    return respond(e.status(), e.code, headers)


def _body(raw: bytes, content_type: str = "") -> Any:
    if content_type.startswith("application/vnd.kubernetes.protobuf"):
        return protobuf.decode(raw)
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise errors.bad_request(f"could not decode the body: {e}") from None


def _write_opts(q: Any, options_kind: str) -> WriteOptions:
    """The write's query options. 1.24 has no server-side field validation: `fieldValidation` must be one
    of its values (422 on `options_kind`, e.g. PatchOptions, otherwise) but changes nothing, so unknown
    fields of a custom resource are pruned silently whatever it says (kubectl checks them itself)."""
    fv = q.get("fieldValidation", "")
    if fv not in ("", "Ignore", "Strict", "Warn"):
        why = f'Unsupported value: "{fv}": supported values: "", "Ignore", "Strict", "Warn"'
        raise ApiError(
            422,
            "Invalid",
            f'{options_kind}.meta.k8s.io "" is invalid: fieldValidation: {why}',
            {
                "group": "meta.k8s.io",
                "kind": options_kind,
                "causes": [errors.cause("fieldValidation", why, "FieldValueNotSupported")],
            },
        )
    return WriteOptions(
        dry_run="All" in q.getall("dryRun", []),
        field_manager=q.get("fieldManager"),
        force=q.get("force") == "true",
    )


def _delete_opts(q: Any, body: Any) -> DeleteOptions:
    body = body if isinstance(body, dict) else {}
    grace = q.get("gracePeriodSeconds", body.get("gracePeriodSeconds"))
    prop = q.get("propagationPolicy") or body.get("propagationPolicy")
    if not prop and (q.get("orphanDependents") == "true" or body.get("orphanDependents") is True):
        prop = "Orphan"
    pre = body.get("preconditions") or {}
    dry = "All" in q.getall("dryRun", []) or "All" in (body.get("dryRun") or [])
    return DeleteOptions(
        int(grace) if grace is not None else None, prop, pre.get("uid"), pre.get("resourceVersion"), dry
    )


class Handlers:
    def __init__(self, core: Core, logs_dir: Path, faults: Faults) -> None:
        self.core = core
        self.logs_dir = logs_dir
        self.faults = faults

    # -- entry ---------------------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        status = 500
        try:
            resp = await self._handle(request)
            status = resp.status
            return resp
        except ApiError as e:
            status = e.code
            return error_response(e)
        except (ConnectionResetError, web.HTTPException):
            raise
        except Exception as e:  # an emulator bug: answer like the apiserver would, keep serving
            log.exception("internal error on %s %s", request.method, request.path_qs)
            return error_response(ApiError(500, "InternalError", f"emulator internal error: {e!r}"))
        finally:
            self.core.warnings.clear()
            log.debug("%s %s -> %s", request.method, request.path_qs, status)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path.startswith("/_emulator/"):
            return await self._emulator(request, path)
        if self.faults.latency_seconds > 0:
            await asyncio.sleep(self.faults.latency_seconds)
        code = self.faults.pick_error()
        if code is not None:
            raise ApiError(code, REASONS.get(code, "InternalError"), f"injected fault ({code})")
        doc = self._static(request, path)
        if doc is not None:
            return doc
        target = parse_path(path, self.core)
        if target is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        rt = self.core.rt(target.group, target.version, target.plural)
        if rt.namespaced and not target.namespace and target.name:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        resp = await self._resource(request, rt, target)
        for w in dict.fromkeys(self.core.warnings):
            resp.headers.add("Warning", f'299 - "{w}"')
        return resp

    def _static(self, request: web.Request, path: str) -> web.StreamResponse | None:
        reg = self.core.registry
        host = request.host
        if path in ("/healthz", "/readyz", "/livez"):
            return web.Response(text="ok")
        if path == "/version":
            return respond(discovery.VERSION)
        if path in ("/api", "/apis") and discovery.wants_aggregated(request.headers.get("Accept", "")):
            listing = discovery.aggregated(reg, legacy=path == "/api")
            return web.Response(text=json.dumps(listing), headers={"Content-Type": discovery.AGGREGATED_V2})
        if path == "/api":
            return respond(discovery.api_versions(host))
        if path == "/apis":
            return respond(discovery.group_list(reg))
        if path == "/openapi/v2":
            # 1.24 serves no /openapi/v3 (a 404 like any unknown path): kubectl falls back to this
            doc = openapi.document(reg, discovery.VERSION["gitVersion"], self.core.openapi_published)
            if "protobuf" in request.headers.get("Accept", ""):
                return web.Response(
                    body=openapi.document_pb(doc),
                    content_type="application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                )
            return respond(doc)
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["api"] and len(parts) == 2 or parts[:1] == ["apis"] and len(parts) == 3:
            group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
            found = discovery.resource_list(reg, group, version)
            if found is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return respond(found)
        if parts[:1] == ["apis"] and len(parts) == 2:
            grp = discovery.group(reg, parts[1])
            if grp is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return respond({"kind": "APIGroup", "apiVersion": "v1", **grp})
        return None

    async def _emulator(self, request: web.Request, path: str) -> web.StreamResponse:
        if path == "/_emulator/faults":
            if request.method == "POST":
                try:
                    self.faults.update(await request.json())
                except (ValueError, TypeError) as e:
                    raise errors.bad_request(str(e)) from None
            return respond(self.faults.to_dict())
        raise ApiError(404, "NotFound", "no such emulator endpoint")

    # -- resources -----------------------------------------------------------------------------------------
    async def _resource(self, request: web.Request, rt: ResourceType, t: Target) -> web.StreamResponse:
        q = request.query
        m = request.method
        core = self.core
        if t.watch or (not t.name and m == "GET" and q.get("watch") in ("true", "1")):
            return await self._watch(request, rt, t)
        if not t.name:
            if m == "GET":
                return self._list(request, rt, t.namespace)
            if m == "POST":
                body = _body(await request.read(), request.content_type)
                return respond(core.create(rt, t.namespace, body, _write_opts(q, "CreateOptions")), 201)
            if m == "DELETE":
                return self._delete_collection(
                    request, rt, t.namespace, _body(await request.read(), request.content_type)
                )
            raise errors.method_not_allowed()
        if t.sub and t.sub not in rt.subresources:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if t.sub == "log":
            pod = core.get(rt, t.namespace, t.name)
            return await logs.serve_log(
                request, self.logs_dir, pod, q, lambda: core.store.get(rt.key, t.namespace, t.name)
            )
        if t.sub == "binding" and m == "POST":
            return respond(self._bind(rt, t, _body(await request.read(), request.content_type)), 201)
        if t.sub == "eviction" and m == "POST":
            body = _body(await request.read(), request.content_type)
            core.delete(rt, t.namespace, t.name, _delete_opts(q, body.get("deleteOptions") or {}))
            return respond(
                {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}, 201
            )
        sub = t.sub or None
        if sub == "scale":
            if m == "GET":
                return respond(scale.to_scale(rt, core.get(rt, t.namespace, t.name)))
            if m in ("PUT", "PATCH"):
                ctype = request.headers.get("Content-Type", "application/json")
                raw = await request.read()
                opts = _write_opts(q, "PatchOptions" if m == "PATCH" else "UpdateOptions")
                return respond(scale.write(core, rt, t.namespace, t.name, m, ctype, raw, opts))
        if sub not in (None, "status", "finalize"):
            raise errors.method_not_allowed()
        if m == "GET":
            obj = core.get(rt, t.namespace, t.name)
            if wants_table(request.headers.get("Accept", "")):
                return respond(
                    to_table(
                        rt, [obj], obj["metadata"]["resourceVersion"], q.get("includeObject", "Metadata")
                    )
                )
            return respond(obj)
        if m == "PUT":
            body = _body(await request.read(), request.content_type)
            return respond(
                core.update(
                    rt,
                    t.namespace,
                    t.name,
                    body,
                    subresource=sub if sub == "status" else None,
                    opts=_write_opts(q, "UpdateOptions"),
                )
            )
        if m == "PATCH":
            raw = await request.read()
            ctype = request.headers.get("Content-Type", "application/json")
            opts = _write_opts(q, "PatchOptions")
            existed = core.store.get(rt.key, t.namespace if rt.namespaced else "", t.name) is not None
            obj = core.patch(rt, t.namespace, t.name, ctype, raw, subresource=sub, opts=opts)
            return respond(obj, 200 if existed else 201)  # server-side apply may create
        if m == "DELETE" and sub is None:
            obj = core.delete(
                rt, t.namespace, t.name, _delete_opts(q, _body(await request.read(), request.content_type))
            )
            return respond(obj)
        raise errors.method_not_allowed()

    def _bind(self, rt: ResourceType, t: Target, body: Any) -> Obj:
        node = ((body or {}).get("target") or {}).get("name")
        if not node:
            raise errors.invalid(
                rt, t.name, [errors.cause("target.name", "Required value", "FieldValueRequired")]
            )
        pod = self.core.get(rt, t.namespace, t.name)
        current = (pod.get("spec") or {}).get("nodeName")
        if current:
            why = f'pod {t.name} is already assigned to node "{current}"'
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on pods/binding "{t.name}": {why}',
                {"name": t.name, "kind": "pods/binding"},
            )
        pod["spec"]["nodeName"] = node
        self.core.update(rt, t.namespace, t.name, pod)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}

    def _list(self, request: web.Request, rt: ResourceType, ns: str) -> web.Response:
        q = request.query
        labels = parse_label_selector(q.get("labelSelector"))
        fields = parse_field_selector(q.get("fieldSelector"))
        items, rv = self.core.list(
            rt, ns, lambda o: labels(o) and fields(o), label_equalities(q.get("labelSelector"))
        )
        meta: dict[str, Any] = {"resourceVersion": rv}
        if q.get("continue"):
            try:
                after = tuple(json.loads(base64.urlsafe_b64decode(q["continue"].encode())))
            except ValueError:
                raise errors.bad_request("invalid continue token") from None
            items = [i for i in items if (i["metadata"].get("namespace", ""), i["metadata"]["name"]) > after]
        limit = int(q.get("limit") or 0)
        if limit and len(items) > limit:
            last = items[limit - 1]["metadata"]
            token = json.dumps([last.get("namespace", ""), last["name"]]).encode()
            meta["continue"] = base64.urlsafe_b64encode(token).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        if wants_table(request.headers.get("Accept", "")):
            table = to_table(rt, items, rv, q.get("includeObject", "Metadata"))
            table["metadata"].update(meta)
            return respond(table)
        return respond(
            {"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": meta, "items": items}
        )

    def _delete_collection(self, request: web.Request, rt: ResourceType, ns: str, body: Any) -> web.Response:
        q = request.query
        labels = parse_label_selector(q.get("labelSelector"))
        fields = parse_field_selector(q.get("fieldSelector"))
        items, _ = self.core.list(rt, ns, lambda o: labels(o) and fields(o))
        opts = _delete_opts(q, body)
        deleted = []
        for obj in items:
            with contextlib.suppress(ApiError):
                deleted.append(
                    self.core.delete(rt, obj["metadata"].get("namespace", ""), obj["metadata"]["name"], opts)
                )
        return respond(
            {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self.core.store.rv)},
                "items": deleted,
            }
        )

    # -- watch ---------------------------------------------------------------------------------------------
    async def _watch(self, request: web.Request, rt: ResourceType, t: Target) -> web.StreamResponse:
        q = request.query
        labels = parse_label_selector(q.get("labelSelector"))
        fields = parse_field_selector(q.get("fieldSelector"))
        ns = t.namespace
        if t.name:
            by_name = parse_field_selector(f"metadata.name={t.name}")
        else:

            def by_name(_o: Any) -> bool:
                return True

        def matches(o: Mapping[str, Any] | None) -> bool:
            if o is None:
                return False
            if rt.namespaced and ns and o["metadata"].get("namespace") != ns:
                return False
            return labels(o) and fields(o) and by_name(o)

        store = self.core.store
        rv_param = q.get("resourceVersion", "")
        start = int(rv_param) if rv_param not in ("", "0") and rv_param.isdigit() else None
        table = wants_table(request.headers.get("Accept", ""))
        bookmarks = q.get("allowWatchBookmarks") == "true"
        include = q.get("includeObject", "Metadata")
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else DEFAULT_WATCH_SECONDS
        drop_after = self.faults.watch_drop_seconds
        dropping = drop_after is not None and 0 < drop_after < timeout
        if drop_after is not None and dropping:
            timeout = float(drop_after)
        deadline = time.monotonic() + timeout
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        first = True

        async def send(kind: str, obj: Obj) -> None:
            nonlocal first
            if table and kind not in ("ERROR", "BOOKMARK"):
                obj = to_table(
                    rt, [obj], obj["metadata"].get("resourceVersion", ""), include, with_columns=first
                )
                first = False
            await resp.write(_watch_line(kind, obj))

        if start is not None and store.too_old(start):
            await send(
                "ERROR", errors.gone(f"too old resource version: {start} ({store.compacted_rv})").status()
            )
            return resp
        watcher = store.subscribe(rt.key, start)
        try:
            if start is None or q.get("sendInitialEvents") == "true":
                items, rv = self.core.list(rt, ns or None, matches)
                for obj in items:
                    await send("ADDED", obj)
                if q.get("sendInitialEvents") == "true" and bookmarks:
                    await send("BOOKMARK", self._bookmark(rt, rv, initial_end=True))
            next_bookmark = time.monotonic() + BOOKMARK_SECONDS
            while True:
                now = time.monotonic()
                if now >= deadline:
                    if dropping:
                        self.faults.watches_dropped += 1
                    break
                wait = min(deadline, next_bookmark) - now
                try:
                    async with asyncio.timeout(max(0.01, wait)):  # not wait_for: see gc.py
                        ev = await watcher.queue.get()
                except TimeoutError:
                    if bookmarks and time.monotonic() >= next_bookmark:
                        await send("BOOKMARK", self._bookmark(rt, str(store.rv)))
                        next_bookmark = time.monotonic() + BOOKMARK_SECONDS
                    continue
                if ev is None:
                    break
                kind = self._transition(ev, matches)
                if kind and table:
                    await send(kind, self.core._present(rt, dict(ev.obj)))
                elif kind:
                    key = (kind, rt.api_version, rt.kind)
                    line = ev.lines.get(key)
                    if line is None:
                        line = ev.lines[key] = _watch_line(kind, self.core._present(rt, dict(ev.obj)))
                    await resp.write(line)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            store.unsubscribe(watcher)
        return resp

    @staticmethod
    def _transition(ev: Event, matches: Any) -> str | None:
        now_in = matches(ev.obj)
        was_in = matches(ev.old)
        if ev.type == "DELETED":
            return "DELETED" if was_in or now_in else None
        if ev.type == "ADDED":
            return "ADDED" if now_in else None
        if now_in and was_in:
            return "MODIFIED"
        if now_in:
            return "ADDED"
        if was_in:
            return "DELETED"
        return None

    @staticmethod
    def _bookmark(rt: ResourceType, rv: str, initial_end: bool = False) -> Obj:
        meta: dict[str, Any] = {"resourceVersion": rv}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}


def _watch_line(kind: str, obj: Mapping[str, Any]) -> bytes:
    """One watch event as the API streams it: a JSON object per line."""
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"
