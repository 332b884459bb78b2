"""The emulated control plane: create/get/list/update/patch/delete with Kubernetes semantics.

HTTP-free so handlers, the garbage collector and tests share one implementation. Everything runs on the
server's event loop, so no locking is needed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from . import admission, errors, objects, patching, rootca, schema, validation
from .errors import ApiError
from .resources import CRD_KEY, Registry, ResourceType, types_from_crd
from .selectors import Predicate
from .storage import Obj, Store

OPENAPI_DELAY_SECONDS = 1.0
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
NS_TYPE = ("", "namespaces")
CM_TYPE = ("", "configmaps")
POD_TYPE = ("", "pods")
SA_TYPE = ("", "serviceaccounts")
QUOTA_TYPE = ("", "resourcequotas")
PRIORITY_CLASS_TYPE = ("scheduling.k8s.io", "priorityclasses")


@dataclass
class WriteOptions:
    dry_run: bool = False
    field_manager: str | None = None
    force: bool = False


@dataclass
class DeleteOptions:
    grace_period: int | None = None
    propagation: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    dry_run: bool = False


class Core:
    def __init__(self, history_size: int = 2000, openapi_delay: float = OPENAPI_DELAY_SECONDS) -> None:
        self.registry = Registry()
        self.store = Store(history_size)
        self.applied: dict[tuple[str, str, str], set[tuple[str, ...]]] = {}
        self.warnings: list[str] = []
        # CRD name -> monotonic time its schemas appear in /openapi/v2
        self.openapi_delay = openapi_delay
        self._openapi_at: dict[str, float] = {}
        ns_rt = self.rt("", "v1", "namespaces")
        for name in SYSTEM_NAMESPACES:
            self.create(ns_rt, "", {"metadata": {"name": name}})

    # -- lookups -------------------------------------------------------------------------------------------
    def rt(self, group: str, version: str, plural: str) -> ResourceType:
        found = self.registry.get(group, version, plural)
        if found is None:
            raise ApiError(
                404,
                "NotFound",
                "the server could not find the requested resource",
                {"group": group, "kind": plural},
            )
        return found

    def openapi_published(self, rt: ResourceType) -> bool:
        """Whether `rt`'s schema is in the OpenAPI documents yet: built-ins always; a CRD's types
        `openapi_delay` seconds after it became Established (the real server's OpenAPI controller publishes
        asynchronously, so `kubectl explain` right after `kubectl wait --for=condition=Established` fails
        there too)."""
        if rt.validations_from is None:
            return True
        return time.monotonic() >= self._openapi_at.get(rt.validations_from, math.inf)

    def rt_for(self, api_version: str, kind: str) -> ResourceType | None:
        group, _, version = api_version.rpartition("/")
        return next((r for r in self.registry.in_group_version(group, version) if r.kind == kind), None)

    def _present(self, rt: ResourceType, obj: Obj) -> Obj:
        obj["apiVersion"] = rt.api_version
        obj["kind"] = rt.kind
        return obj

    def get(self, rt: ResourceType, ns: str, name: str) -> Obj:
        obj = self.store.get(rt.key, ns if rt.namespaced else "", name)
        if obj is None:
            raise errors.not_found(rt, name)
        return self._present(rt, obj)

    def list(
        self, rt: ResourceType, ns: str | None, match: Predicate, labels: Mapping[str, str] | None = None
    ) -> tuple[list[Obj], str]:
        """The matching objects, READ ONLY below the top level (shallow copies sharing the stored objects'
        nested dicts; the store never mutates a stored object, it replaces it): every caller only filters and
        serialises them, and deep-copying each object of every LIST was the emulator's largest cost."""
        scope = (ns or None) if rt.namespaced else None
        items = [
            self._present(rt, dict(o))
            for o in self.store.list(rt.key, scope, where=match, copies=False, labels=labels)
        ]
        return items, str(self.store.rv)

    # -- create --------------------------------------------------------------------------------------------
    def create(self, rt: ResourceType, ns: str, body: Any, opts: WriteOptions | None = None) -> Obj:
        opts = opts or WriteOptions()
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request is not a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if rt.namespaced:
            if meta.get("namespace") and ns and meta["namespace"] != ns:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = ns or meta.get("namespace") or "default"
            self._check_namespace_open(meta["namespace"])
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            for _ in range(20):
                meta["name"] = meta["generateName"] + objects.random_suffix()
                if self.store.get(rt.key, meta.get("namespace", ""), meta["name"]) is None:
                    break
        causes = objects.name_causes(meta.get("name", ""), rt.namespaced)
        if causes:
            raise errors.invalid(rt, meta.get("name", ""), causes)
        if self.store.get(rt.key, meta.get("namespace", ""), meta["name"]) is not None:
            raise errors.already_exists(rt, meta["name"])
        objects.stamp_new(rt, obj)
        if not objects.keeps_status_on_create(rt):
            obj.pop("status", None)
        objects.apply_defaults(rt, obj)
        if rt.key == POD_TYPE:
            self._admit_new_pod(obj)
        self._admit(rt, obj, None, opts)
        if opts.field_manager:
            self._record_manager(obj, opts.field_manager, "Update", None, None)
        if opts.dry_run:
            return self._present(rt, obj)
        stored = self.store.put(rt.key, obj)
        self._after_write(rt, stored, None)
        return self._present(rt, stored)

    def _check_namespace_open(self, ns: str) -> None:
        found = self.store.get(NS_TYPE, "", ns)
        if found is None:
            raise errors.not_found(self.rt("", "v1", "namespaces"), ns)
        if found["metadata"].get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f"unable to create new content in namespace {ns} because it is being terminated",
                {"name": ns, "kind": "namespaces"},
            )

    # -- update / patch ------------------------------------------------------------------------------------
    def update(
        self,
        rt: ResourceType,
        ns: str,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        opts: WriteOptions | None = None,
    ) -> Obj:
        opts = opts or WriteOptions()
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request is not a JSON object")
        current = self.get(rt, ns, name)
        meta = body.get("metadata") or {}
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        rv = meta.get("resourceVersion")
        if rv and rv != current["metadata"]["resourceVersion"]:
            raise errors.conflict(rt, name)
        if not rv and rt.is_custom:
            raise errors.invalid(
                rt,
                name,
                [
                    errors.cause(
                        "metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update"
                    )
                ],
            )
        return self._write(rt, current, copy.deepcopy(body), subresource, opts)

    def patch(
        self,
        rt: ResourceType,
        ns: str,
        name: str,
        content_type: str,
        raw: bytes,
        *,
        subresource: str | None = None,
        opts: WriteOptions | None = None,
    ) -> Obj:
        opts = opts or WriteOptions()
        ctype = content_type.split(";")[0].strip()
        if ctype == "application/apply-patch+yaml":
            return self._apply(rt, ns, name, raw, subresource, opts)
        try:
            # JSON first: the *+json patch types are JSON, and PyYAML's pure-Python parser costs ~20 ms per
            # pod status patch (the largest CPU cost of a 300-build bench); YAML stays as the fallback.
            patch = json.loads(raw or b"null")
        except ValueError:
            try:
                patch = yaml.safe_load(raw.decode() or "null")
            except (yaml.YAMLError, UnicodeDecodeError) as e:
                raise errors.bad_request(f"invalid patch body: {e}") from None
        current = self.get(rt, ns, name)
        if ctype == "application/merge-patch+json":
            patched = patching.merge_patch(current, patch)
        elif ctype == "application/json-patch+json":
            patched = patching.json_patch(current, patch)
        elif ctype == "application/strategic-merge-patch+json":
            if rt.is_custom:
                raise errors.unsupported_media(ctype)
            patched = patching.strategic_merge(current, patch)
        else:
            raise errors.unsupported_media(ctype)
        if not isinstance(patched, dict):
            raise errors.bad_request("patch result is not an object")
        pmeta = patched.setdefault("metadata", {})
        if (
            pmeta.get("resourceVersion")
            and pmeta["resourceVersion"] != current["metadata"]["resourceVersion"]
        ):
            raise errors.conflict(rt, name)
        return self._write(rt, current, patched, subresource, opts)

    def _apply(
        self, rt: ResourceType, ns: str, name: str, raw: bytes, subresource: str | None, opts: WriteOptions
    ) -> Obj:
        """Server-side apply: merge the applied config, drop fields this manager no longer applies, and
        refuse (409) to change a value another apply manager owns unless forced."""
        manager = opts.field_manager
        if not manager:
            raise errors.bad_request("PATCH, field manager required for apply requests")
        try:
            applied = yaml.safe_load(raw.decode())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise errors.bad_request(f"error decoding YAML: {e}") from None
        if not isinstance(applied, dict) or not applied.get("apiVersion") or not applied.get("kind"):
            raise errors.bad_request("apply patch must be an object with apiVersion and kind")
        applied.setdefault("metadata", {})["name"] = name
        now_fields = patching.field_set(applied, keyed=not rt.is_custom)
        try:
            current = self.get(rt, ns, name)
        except ApiError as e:
            if e.code != 404 or subresource:
                raise
            body = copy.deepcopy(applied)
            self._record_manager(body, manager, "Apply", applied, None)
            created = self.create(rt, ns, body, WriteOptions(opts.dry_run, None))
            if not opts.dry_run:
                self.applied[(created["metadata"]["uid"], manager, "")] = now_fields
            return created
        uid = current["metadata"]["uid"]
        sub = subresource or ""
        akey = (uid, manager, sub)
        self._apply_conflicts(rt, current, applied, now_fields, akey, opts.force)
        stale = {p for p in self.applied.get(akey, set()) - now_fields if p[0] not in ("apiVersion", "kind")}
        merged = patching.remove_paths(copy.deepcopy(current), stale)
        body = {k: v for k, v in applied.items() if k != "metadata"}
        if rt.is_custom:
            merged = patching.apply_merge(merged, body)
        else:
            merged = patching.strategic_merge(merged, body)
        keep = ("labels", "annotations", "finalizers", "ownerReferences")
        ameta = {k: v for k, v in applied["metadata"].items() if k in keep}
        merged["metadata"] = patching.strategic_merge(merged["metadata"], ameta)
        merged["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        self._record_manager(merged, manager, "Apply", applied, subresource)
        wrote = self._write(rt, current, merged, subresource, opts)
        if not opts.dry_run:
            self.applied[akey] = now_fields
        return wrote

    def _apply_conflicts(
        self,
        rt: ResourceType,
        current: Obj,
        applied: Obj,
        fields: set[tuple[str, ...]],
        akey: tuple[str, str, str],
        force: bool,
    ) -> None:
        conflicts: list[tuple[str, str]] = []
        for (uid, other, sub), owned in self.applied.items():
            if uid != akey[0] or sub != akey[2] or other == akey[1]:
                continue
            clash = set()
            for path in fields & owned:
                found, value = patching.value_at(applied, path)
                if not found or isinstance(value, (dict, list)):
                    continue
                here, now = patching.value_at(current, path)
                if here and now != value:
                    clash.add(path)
            if clash and force:
                self.applied[(uid, other, sub)] = owned - clash
            conflicts += [(other, "." + ".".join(p)) for p in sorted(clash)]
        if conflicts and not force:
            n = len(conflicts)
            text = "; ".join(f'conflict with "{m}": {f}' for m, f in conflicts)
            raise ApiError(
                409,
                "Conflict",
                f"Apply failed with {n} conflict{'s' if n > 1 else ''}: {text}",
                {
                    "name": current["metadata"]["name"],
                    "group": rt.group,
                    "kind": rt.plural,
                    "causes": [
                        {"reason": "FieldManagerConflict", "message": f'conflict with "{m}"', "field": f}
                        for m, f in conflicts
                    ],
                },
            )

    def _record_manager(
        self, obj: Obj, manager: str, operation: str, applied: Obj | None, sub: str | None
    ) -> None:
        fields = patching.fields_v1({k: v for k, v in (applied or {}).items() if k != "status" or sub})
        if applied and isinstance(applied.get("metadata"), dict):
            meta_fields = patching.fields_v1(
                {k: v for k, v in applied["metadata"].items() if k in ("labels", "annotations", "finalizers")}
            )
            fields["f:metadata"] = meta_fields
        entry: dict[str, Any] = {
            "manager": manager,
            "operation": operation,
            "apiVersion": obj["apiVersion"],
            "time": objects.now(),
            "fieldsType": "FieldsV1",
            "fieldsV1": fields,
        }
        if sub:
            entry["subresource"] = sub
        mf = [
            m
            for m in obj["metadata"].get("managedFields") or []
            if not (
                m.get("manager") == manager
                and m.get("operation") == operation
                and m.get("subresource") == sub
            )
        ]
        mf.append(entry)
        obj["metadata"]["managedFields"] = mf

    def _write(
        self, rt: ResourceType, current: Obj, new: Obj, subresource: str | None, opts: WriteOptions
    ) -> Obj:
        """Common tail of update and patch: subresource split, immutable metadata, generation, admission."""
        name = current["metadata"]["name"]
        if subresource == "status":
            result = copy.deepcopy(current)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
        else:
            result = new
            if rt.has_status:
                if "status" in current:
                    result["status"] = copy.deepcopy(current["status"])
                else:
                    result.pop("status", None)
        meta = result.setdefault("metadata", {})
        cmeta = current["metadata"]
        for k in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "name",
            "generation",
        ):
            if k in cmeta:
                meta[k] = cmeta[k]
            else:
                meta.pop(k, None)
        if "managedFields" not in meta and "managedFields" in cmeta:
            meta["managedFields"] = cmeta["managedFields"]
        if cmeta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(cmeta.get("finalizers") or [])
            if added:
                raise errors.invalid(
                    rt,
                    name,
                    [
                        errors.cause(
                            "metadata.finalizers",
                            "Forbidden: no new finalizers can be added if the object is being "
                            "deleted, found new finalizers " + str(sorted(added)),
                            "FieldValueForbidden",
                        )
                    ],
                )
        if rt.plural == "secrets" and not rt.group:
            objects.secret_string_data(result)
        result["apiVersion"] = rt.api_version
        result["kind"] = rt.kind
        if objects.tracks_generation(rt) and _spec_changed(current, result, rt):
            meta["generation"] = int(cmeta.get("generation", 1)) + 1
        self._admit(rt, result, current, opts)
        meta["resourceVersion"] = cmeta["resourceVersion"]
        if _same(current, result):
            return current
        if opts.dry_run:
            return self._present(rt, result)
        if (
            meta.get("deletionTimestamp")
            and not meta.get("finalizers")
            and not _waits_for_kubelet(rt, result)
        ):
            gone = self.store.remove(rt.key, meta.get("namespace", ""), name)
            self._after_remove(rt, gone or result)
            return self._present(rt, gone or result)
        stored = self.store.put(rt.key, result)
        self._after_write(rt, stored, current)
        return self._present(rt, stored)

    def _admit_new_pod(self, pod: Obj) -> None:
        """Mutating admission of a pod create, in the apiserver's plugin order (see admission.py)."""
        ns = pod["metadata"]["namespace"]

        def refuse(why: str) -> ApiError:
            """A plugin's 403 Forbidden, in its words: `pods "NAME" is forbidden: WHY`."""
            return errors.forbidden(self.rt("", "v1", "pods"), pod["metadata"].get("name", ""), why)

        sa = self.store.peek(SA_TYPE, ns, admission.service_account_name(pod))
        if sa is None and not admission.is_mirror_pod(pod):
            # The ServiceAccount plugin refuses a pod whose ServiceAccount does not exist (yet), in its words.
            sa_name = admission.service_account_name(pod)
            raise refuse(f'error looking up service account {ns}/{sa_name}: '
                         f'serviceaccount "{sa_name}" not found')
        admission.service_account(pod, sa)
        admission.default_toleration_seconds(pod)
        refused = admission.priority(pod, self.store.list(PRIORITY_CLASS_TYPE, "", copies=False))
        if refused is not None:
            raise refuse(refused)
        quotas = self.store.list(QUOTA_TYPE, ns, copies=False)
        if quotas and not admission.is_mirror_pod(pod):  # ResourceQuota, the last (validating) plugin
            over = admission.exceeded_pod_quota(quotas, self.store.list(POD_TYPE, ns, copies=False))
            if over is not None:
                raise refuse(over)

    def _admit(self, rt: ResourceType, obj: Obj, old: Obj | None, opts: WriteOptions) -> None:
        causes = validation.metadata(obj) if rt.is_custom else validation.validate(rt, obj, old)
        if causes:
            raise errors.invalid(rt, obj["metadata"].get("name", ""), causes)
        if rt.is_custom:
            schema.admit_custom(rt, obj, old)
        elif rt.key == CRD_KEY:
            schema.admit_crd(rt, obj)

    # -- hooks ---------------------------------------------------------------------------------------------
    def _after_write(self, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        if rt.key == CRD_KEY:
            self._register_crd(obj)
        elif rt.key == NS_TYPE and old is None:
            sa_rt = self.rt("", "v1", "serviceaccounts")
            name = obj["metadata"]["name"]
            if self.store.get(sa_rt.key, name, "default") is None:
                self.create(sa_rt, name, {"metadata": {"name": "default"}})
            self._publish_root_ca(name)
        elif rt.key == CM_TYPE and obj["metadata"]["name"] == rootca.NAME and rootca.needs_reset(obj):
            # root-ca-cert-publisher: someone changed the bundle, write it back
            with contextlib.suppress(ApiError):
                self.update(rt, obj["metadata"]["namespace"], rootca.NAME, rootca.reset(obj))

    def _publish_root_ca(self, ns: str) -> None:
        """What kube-controller-manager's root-ca-cert-publisher does for a namespace without the ConfigMap
        (new, or the ConfigMap was deleted); nothing in a terminating or missing namespace."""
        if self.store.peek(CM_TYPE, ns, rootca.NAME) is None:
            with contextlib.suppress(ApiError):
                self.create(self.rt("", "v1", "configmaps"), ns, rootca.configmap())

    def _register_crd(self, crd: Obj) -> None:
        name = crd["metadata"]["name"]
        self.registry.remove_crd(name)
        for t in types_from_crd(crd):
            self.registry.add(t)
        spec = crd.get("spec") or {}
        names = dict(spec.get("names") or {})
        names.setdefault("singular", names.get("kind", "").lower())
        names.setdefault("listKind", names.get("kind", "") + "List")
        stored = [v["name"] for v in spec.get("versions") or [] if v.get("storage")]
        old_status = crd.get("status") or {}
        conds = [
            {
                "type": "NamesAccepted",
                "status": "True",
                "reason": "NoConflicts",
                "message": "no conflicts found",
                "lastTransitionTime": objects.now(),
            },
            {
                "type": "Established",
                "status": "True",
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
                "lastTransitionTime": objects.now(),
            },
        ]
        if crd["metadata"].get("deletionTimestamp"):
            conds.append(
                {
                    "type": "Terminating",
                    "status": "True",
                    "reason": "InstanceDeletionInProgress",
                    "message": "CustomResource deletion is in progress",
                    "lastTransitionTime": objects.now(),
                }
            )
        status = {
            "conditions": old_status.get("conditions") or conds,
            "acceptedNames": names,
            "storedVersions": sorted(set(old_status.get("storedVersions") or []) | set(stored)),
        }
        if crd["metadata"].get("deletionTimestamp"):
            status["conditions"] = conds
        if status != old_status:
            crd["status"] = status
            self.store.put(CRD_KEY, crd)
        self._openapi_at.setdefault(name, time.monotonic() + self.openapi_delay)

    def _after_remove(self, rt: ResourceType, obj: Obj) -> None:
        if rt.key == CM_TYPE and obj["metadata"]["name"] == rootca.NAME:
            self._publish_root_ca(obj["metadata"].get("namespace", ""))
        if rt.key == CRD_KEY:
            name = obj["metadata"]["name"]
            spec = obj.get("spec") or {}
            self.registry.remove_crd(name)
            self._openapi_at.pop(name, None)
            self.store.drop_type((spec.get("group", ""), (spec.get("names") or {}).get("plural", "")))
        uid = obj["metadata"].get("uid", "")
        for key in [k for k in self.applied if k[0] == uid]:
            del self.applied[key]

    # -- delete --------------------------------------------------------------------------------------------
    def delete(self, rt: ResourceType, ns: str, name: str, opts: DeleteOptions | None = None) -> Obj:
        opts = opts or DeleteOptions()
        current = self.get(rt, ns, name)
        meta = current["metadata"]
        if opts.uid and opts.uid != meta.get("uid"):
            raise errors.conflict(
                rt,
                name,
                f"Precondition failed: UID in precondition: {opts.uid}, UID in "
                f"object meta: {meta.get('uid')}",
            )
        if opts.resource_version and opts.resource_version != meta.get("resourceVersion"):
            raise errors.conflict(
                rt,
                name,
                f"Precondition failed: ResourceVersion in precondition: "
                f"{opts.resource_version}, ResourceVersion in object meta: "
                f"{meta.get('resourceVersion')}",
            )
        updated = copy.deepcopy(current)
        umeta = updated["metadata"]
        finalizers = list(umeta.get("finalizers") or [])
        if opts.propagation == "Foreground" and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        if opts.propagation == "Orphan" and "orphan" not in finalizers:
            finalizers.append("orphan")
        if rt.key == NS_TYPE or rt.key == CRD_KEY:
            finalizers = finalizers or []
        grace = self._pod_grace(rt, current, opts)
        if grace > 0:
            if not umeta.get("deletionTimestamp") or grace < int(
                umeta.get("deletionGracePeriodSeconds") or 0
            ):
                umeta["deletionTimestamp"] = objects.now(grace)
                umeta["deletionGracePeriodSeconds"] = grace
        elif finalizers or rt.key in (NS_TYPE, CRD_KEY):
            umeta.setdefault("deletionTimestamp", objects.now())
            umeta.setdefault("deletionGracePeriodSeconds", 0)
            if rt.key == NS_TYPE:
                updated.setdefault("status", {})["phase"] = "Terminating"
        else:
            if opts.dry_run:
                return current
            gone = self.store.remove(rt.key, meta.get("namespace", ""), name)
            self._after_remove(rt, gone or current)
            return self._present(rt, gone or current)
        if rt.key == ("", "pods") and grace == 0 and umeta.get("deletionGracePeriodSeconds"):
            umeta["deletionGracePeriodSeconds"] = 0
        umeta["finalizers"] = finalizers
        if not finalizers:
            umeta.pop("finalizers")
        if opts.dry_run or _same(current, updated):
            return current
        stored = self.store.put(rt.key, updated)
        if rt.key == CRD_KEY:
            self._register_crd(stored)
        return self._present(rt, stored)

    def _pod_grace(self, rt: ResourceType, pod: Obj, opts: DeleteOptions) -> int:
        """Graceful deletion only for pods bound to a node and not yet terminal; 0 means remove now."""
        if rt.key != ("", "pods"):
            return 0
        spec = pod.get("spec") or {}
        if not spec.get("nodeName") or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return 0
        if opts.grace_period is not None:
            return max(0, opts.grace_period)
        return int(spec.get("terminationGracePeriodSeconds", 30))

    def finalize_removal(self, rt: ResourceType, obj: Obj) -> None:
        """Remove an object whose deletion is complete (used by the garbage collector)."""
        meta = obj["metadata"]
        gone = self.store.remove(rt.key, meta.get("namespace", ""), meta["name"])
        if gone is not None:
            self._after_remove(rt, gone)

    def type_for_key(self, tkey: tuple[str, str]) -> ResourceType | None:
        found = self.registry.versions_of(*tkey)
        return found[0] if found else None

    def on_event(self, listener: Callable[[Any], None]) -> None:
        self.store.listeners.append(listener)


def _waits_for_kubelet(rt: ResourceType, obj: Obj) -> bool:
    return rt.key == ("", "pods") and bool(obj["metadata"].get("deletionGracePeriodSeconds"))


def _strip(obj: Obj) -> Obj:
    """`obj` without metadata.resourceVersion and managedFields, for comparing (shallow: no deep copy of
    the whole object per write; the nested values are shared, read only)."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return obj
    return {
        **obj,
        "metadata": {k: v for k, v in meta.items() if k not in ("resourceVersion", "managedFields")},
    }


def _same(a: Obj, b: Obj) -> bool:
    return _strip(a) == _strip(b)


def _spec_changed(old: Obj, new: Obj, rt: ResourceType) -> bool:
    skip = {"metadata", "apiVersion", "kind"} | ({"status"} if rt.has_status else set())
    if rt.is_custom or rt.plural in ("customresourcedefinitions",):
        a = {k: v for k, v in old.items() if k not in skip}
        b = {k: v for k, v in new.items() if k not in skip}
        return a != b
    return old.get("spec") != new.get("spec")
