"""Pure decisions of the local kubelet: scheduling, env, volume contents, mount plans, pod status.

Everything here is a function of pod/node manifests (plain dicts as the API returns them) and already
fetched Secret/ConfigMap data, so it is unit-tested without processes or an API server. The kubelet
(`kubelet.py`) does the I/O around it. Messages and reasons copy what Kubernetes writes, because tests
and the operator compare against real-cluster behaviour.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

Obj = Mapping[str, Any]

DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
MAX_TERMINATION_MESSAGE = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
DEFAULT_SECRET_MODE = 0o644


class ConfigError(Exception):
    """A container cannot be configured yet (Kubernetes: waiting reason CreateContainerConfigError)."""


class MountError(Exception):
    """A volume cannot be set up yet (Kubernetes: event FailedMount, container stays ContainerCreating)."""


# --------------------------------------------------------------------------------------------- nodes


@dataclass(frozen=True)
class NodeView:
    """What the scheduler needs to know about a node."""

    name: str
    labels: Mapping[str, str]
    taints: tuple[Mapping[str, Any], ...] = ()
    unschedulable: bool = False
    max_pods: int = 110

    @classmethod
    def from_manifest(cls, node: Obj) -> NodeView:
        pods = (node.get("status") or {}).get("allocatable", {}).get("pods") or (
            (node.get("status") or {}).get("capacity", {}).get("pods")
        )
        return cls(
            name=node["metadata"]["name"],
            labels=dict(node["metadata"].get("labels") or {}),
            taints=tuple((node.get("spec") or {}).get("taints") or ()),
            unschedulable=bool((node.get("spec") or {}).get("unschedulable")),
            max_pods=int(pods) if pods is not None else 110,
        )


def toleration_matches(toleration: Obj, taint: Obj) -> bool:
    """Kubernetes `Toleration.ToleratesTaint`."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    op = toleration.get("operator") or "Equal"
    if key and key != taint.get("key"):
        return False
    if op == "Exists":
        return True
    if not key:  # empty key with Equal is invalid in the API; tolerates nothing
        return False
    return (toleration.get("value") or "") == (taint.get("value") or "")


def _untolerated_taint(pod: Obj, node: NodeView) -> Obj | None:
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    for taint in node.taints:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(toleration_matches(t, taint) for t in tolerations):
            return taint
    return None


def _match_expression(expr: Obj, labels: Mapping[str, str]) -> bool:
    key, op, values = expr.get("key", ""), expr.get("operator", ""), list(expr.get("values") or [])
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt") and key in labels and values:
        try:
            have, want = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def node_selector_matches(pod: Obj, node: NodeView) -> bool:
    """nodeSelector plus requiredDuringSchedulingIgnoredDuringExecution node affinity (labels only)."""
    spec = pod.get("spec") or {}
    for k, v in (spec.get("nodeSelector") or {}).items():
        if node.labels.get(k) != v:
            return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    labels = dict(node.labels)
    for term in terms:  # terms are ORed, expressions ANDed
        exprs = term.get("matchExpressions") or []
        fields = term.get("matchFields") or []
        ok = all(_match_expression(e, labels) for e in exprs)
        ok = ok and all(
            _match_expression({**f, "key": "metadata.name"}, {"metadata.name": node.name}) for f in fields
        )
        if ok and (exprs or fields):
            return True
    return False


def placement_key(pod: Obj) -> str:
    """Everything of a pod that `schedule` looks at: pods with equal keys place alike on the same nodes."""
    spec = pod.get("spec") or {}
    return json.dumps(
        [spec.get("nodeSelector"), spec.get("affinity"), spec.get("tolerations")], sort_keys=True
    )


HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"


def preferred_anti_affinity(pod: Obj) -> list[tuple[int, dict[str, str]]]:
    """The pod's preferred pod anti-affinity terms this scheduler honours: (weight, matchLabels) of terms
    over the hostname topology in the pod's own namespace (what worker pods use to spread a build)."""
    spec = pod.get("spec") or {}
    anti = (spec.get("affinity") or {}).get("podAntiAffinity") or {}
    out: list[tuple[int, dict[str, str]]] = []
    for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution") or ():
        term = t.get("podAffinityTerm") or {}
        labels = (term.get("labelSelector") or {}).get("matchLabels") or {}
        if term.get("topologyKey") == HOSTNAME_TOPOLOGY and labels and not term.get("namespaces"):
            out.append((int(t.get("weight") or 1), {str(k): str(v) for k, v in labels.items()}))
    return out


def schedule(
    pod: Obj, nodes: Sequence[NodeView], load: Mapping[str, int], avoid: Mapping[str, int] | None = None
) -> tuple[str | None, str]:
    """Pick a node for `pod` (least loaded feasible node, ties by name) or explain why none fits.

    `load` counts non-terminal pods already bound per node; `avoid` scores nodes by the pods there that the
    pod's preferred anti-affinity would rather not meet (`preferred_anti_affinity`): the feasible node with
    the lowest score wins first, as the default scheduler's InterPodAffinity score makes it in practice.
    The message has the default scheduler's shape: "0/2 nodes are available: 2 node(s) didn't match Pod's
    node affinity/selector. ...".
    """
    reasons: dict[str, int] = {}
    feasible: list[NodeView] = []
    for node in nodes:
        reason = None
        if node.unschedulable:
            reason = "node(s) were unschedulable"
        elif (taint := _untolerated_taint(pod, node)) is not None:
            reason = f"node(s) had untolerated taint {{{taint.get('key', '')}: {taint.get('value', '')}}}"
        elif not node_selector_matches(pod, node):
            reason = "node(s) didn't match Pod's node affinity/selector"
        elif load.get(node.name, 0) >= node.max_pods:
            reason = "Too many pods"
        if reason is None:
            feasible.append(node)
        else:
            reasons[reason] = reasons.get(reason, 0) + 1
    if feasible:
        avoid = avoid or {}
        best = min(
            feasible, key=lambda n: (avoid.get(n.name, 0), load.get(n.name, 0) / max(n.max_pods, 1), n.name)
        )
        return best.name, ""
    n = len(nodes)
    if not nodes:
        return None, "no nodes available to schedule pods"
    detail = ", ".join(sorted(f"{count} {reason}" for reason, count in reasons.items()))  # as FitError does
    return None, (
        f"0/{n} nodes are available: {detail}. preemption: 0/{n} nodes are available: "
        f"{n} Preemption is not helpful for scheduling."
    )


# ------------------------------------------------------------------------------------ quantities


_SUFFIX: dict[str, Decimal | int] = {
    "": 1,
    "m": Decimal("0.001"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_quantity(text: str | int | float) -> Decimal:
    """A Kubernetes resource quantity ("500m", "2Gi", "1e3") as a Decimal."""
    s = str(text).strip()
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)", s)
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"invalid quantity {text!r}")
    try:
        return Decimal(m.group(1)) * Decimal(_SUFFIX[m.group(2)])
    except InvalidOperation as e:
        raise ValueError(f"invalid quantity {text!r}") from e


def resource_field_value(ref: Obj, container: Obj | None, node_allocatable: Mapping[str, str]) -> str:
    """`resourceFieldRef`: a container's request/limit divided by `divisor`, rounded up.

    Like Kubernetes, an unset limit falls back to the node's allocatable amount.
    """
    resource = ref.get("resource", "")
    kind, _, name = resource.partition(".")
    divisor = parse_quantity(ref.get("divisor") or "1")
    res = (container or {}).get("resources") or {}
    raw = (res.get(kind) or {}).get(name)
    if raw is None and kind == "requests":
        raw = (res.get("limits") or {}).get(name)
    if raw is None:
        raw = node_allocatable.get(name, "0")
    value = parse_quantity(raw)
    return str(math.ceil(value / divisor)) if divisor else "0"


# ------------------------------------------------------------------------------------- field refs


def _go_quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def field_ref_value(pod: Obj, path: str) -> str:
    """`fieldRef.fieldPath` as the kubelet resolves it (env and downward API volumes)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.*)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": status.get("hostIP", "127.0.0.1"),
        "status.hostIPs": status.get("hostIP", "127.0.0.1"),
        "status.podIP": status.get("podIP", "127.0.0.1"),
        "status.podIPs": status.get("podIP", "127.0.0.1"),
    }
    if path in simple:
        return str(simple[path] or "")
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "".join(f"{k}={_go_quote(str(v))}\n" for k, v in sorted(items.items())).rstrip("\n")
    raise ConfigError(f'unsupported fieldPath "{path}"')


# --------------------------------------------------------------------------------------------- env


_VAR_REF = re.compile(r"\$\$|\$\(([^)]*)\)")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined refs are replaced, `$$` escapes, unknown refs stay."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR_REF.sub(sub, text)


@dataclass(frozen=True)
class ObjectData:
    """Secrets and ConfigMaps of the pod's namespace the kubelet fetched (None = does not exist)."""

    namespace: str
    secrets: Mapping[str, Mapping[str, bytes] | None] = field(default_factory=dict)
    configmaps: Mapping[str, Mapping[str, bytes] | None] = field(default_factory=dict)

    def lookup(
        self, kind: str, name: str, key: str | None, optional: bool
    ) -> bytes | Mapping[str, bytes] | None:
        """One key (or the whole data when key is None); None when optional and absent."""
        table = self.secrets if kind == "Secret" else self.configmaps
        data = table.get(name)
        if data is None:
            if optional:
                return None
            raise ConfigError(f'{kind.lower()} "{name}" not found')
        if key is None:
            return data
        if key not in data:
            if optional:
                return None
            raise ConfigError(f"couldn't find key {key} in {kind} {self.namespace}/{name}")
        return data[key]


def secret_data(secret: Obj) -> dict[str, bytes]:
    """Decoded `data` (+ `stringData`, which a real server folds into data) of a Secret manifest."""
    out = {k: base64.b64decode(v or "") for k, v in (secret.get("data") or {}).items()}
    out.update({k: str(v).encode() for k, v in (secret.get("stringData") or {}).items()})
    return out


def configmap_data(cm: Obj) -> dict[str, bytes]:
    """`data` and `binaryData` of a ConfigMap manifest as bytes."""
    out = {k: str(v).encode() for k, v in (cm.get("data") or {}).items()}
    out.update({k: base64.b64decode(v or "") for k, v in (cm.get("binaryData") or {}).items()})
    return out


def referenced_objects(pod: Obj) -> tuple[set[str], set[str]]:
    """Names of Secrets and ConfigMaps the pod's env and volumes refer to (what to fetch)."""
    secrets: set[str] = set()
    cms: set[str] = set()
    spec = pod.get("spec") or {}
    for c in list(spec.get("initContainers") or []) + list(spec.get("containers") or []):
        for e in c.get("env") or []:
            vf = e.get("valueFrom") or {}
            if "secretKeyRef" in vf:
                secrets.add(vf["secretKeyRef"].get("name", ""))
            if "configMapKeyRef" in vf:
                cms.add(vf["configMapKeyRef"].get("name", ""))
        for ef in c.get("envFrom") or []:
            if "secretRef" in ef:
                secrets.add(ef["secretRef"].get("name", ""))
            if "configMapRef" in ef:
                cms.add(ef["configMapRef"].get("name", ""))
    for v in spec.get("volumes") or []:
        if "secret" in v:
            secrets.add(v["secret"].get("secretName", ""))
        if "configMap" in v:
            cms.add(v["configMap"].get("name", ""))
        for src in (v.get("projected") or {}).get("sources") or []:
            if "secret" in src:
                secrets.add(src["secret"].get("name", ""))
            if "configMap" in src:
                cms.add(src["configMap"].get("name", ""))
    return secrets, cms


def _decode(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def resolve_env(
    container: Obj, pod: Obj, data: ObjectData, node_allocatable: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The container's environment as Kubernetes builds it: envFrom first, then env in order with
    `$(VAR)` expansion against what is already defined. Raises ConfigError like CreateContainerConfigError.
    """
    env: dict[str, str] = {}
    for ef in container.get("envFrom") or []:
        prefix = ef.get("prefix") or ""
        if "configMapRef" in ef:
            ref, kind = ef["configMapRef"], "ConfigMap"
        elif "secretRef" in ef:
            ref, kind = ef["secretRef"], "Secret"
        else:
            continue
        values = data.lookup(kind, ref.get("name", ""), None, bool(ref.get("optional")))
        if isinstance(values, Mapping):
            for k, v in values.items():
                if _ENV_NAME.fullmatch(prefix + k):
                    env[prefix + k] = _decode(v)
    for e in container.get("env") or []:
        name = e["name"]
        if "valueFrom" not in e:
            env[name] = expand(str(e.get("value") or ""), env)
            continue
        vf = e["valueFrom"]
        value: str | None
        if "secretKeyRef" in vf or "configMapKeyRef" in vf:
            kind = "Secret" if "secretKeyRef" in vf else "ConfigMap"
            ref = vf["secretKeyRef" if kind == "Secret" else "configMapKeyRef"]
            raw = data.lookup(kind, ref.get("name", ""), ref.get("key", ""), bool(ref.get("optional")))
            value = _decode(raw) if isinstance(raw, bytes) else None
        elif "fieldRef" in vf:
            value = field_ref_value(pod, vf["fieldRef"].get("fieldPath", ""))
        elif "resourceFieldRef" in vf:
            ref = vf["resourceFieldRef"]
            target = container
            if ref.get("containerName"):
                target = _find_container(pod, ref["containerName"]) or container
            value = resource_field_value(ref, target, node_allocatable or {})
        else:
            value = None
        if value is not None:
            env[name] = value
    return env


def _find_container(pod: Obj, name: str) -> Obj | None:
    spec = pod.get("spec") or {}
    for c in list(spec.get("initContainers") or []) + list(spec.get("containers") or []):
        if c.get("name") == name:
            return dict(c)
    return None


def container_argv(container: Obj, env: Mapping[str, str]) -> list[str]:
    """command + args with `$(VAR)` expansion. There is no image entrypoint here, so command is required."""
    command = [expand(str(a), env) for a in container.get("command") or []]
    args = [expand(str(a), env) for a in container.get("args") or []]
    if not command:
        if not args:
            raise ConfigError(
                f'container "{container.get("name")}" has no command: the dev cluster does not pull images, '
                "so it cannot use the image entrypoint"
            )
        return args
    return command + args


# ------------------------------------------------------------------------------------------ volumes


@dataclass(frozen=True)
class FileEntry:
    """One file a secret/configMap/downwardAPI/projected volume contains."""

    path: str  # relative to the volume root
    content: bytes
    mode: int


@dataclass(frozen=True)
class VolumeLayout:
    """How a volume is materialised on the host: a directory we fill (`files`) or a host path."""

    name: str
    kind: str  # emptyDir | files | hostPath
    files: tuple[FileEntry, ...] = ()
    host_path: str | None = None
    read_only: bool = False  # secret/configMap/downwardAPI/projected are read-only in Kubernetes


def _check_rel_path(path: str) -> str:
    if not path or path.startswith("/") or ".." in path.split("/"):
        raise MountError(f"invalid path {path!r}: must be relative and may not contain '..'")
    return path


def _key_files(
    values: Mapping[str, bytes] | None,
    items: Sequence[Obj] | None,
    mode: int,
    kind: str,
    ns: str,
    name: str,
    optional: bool,
) -> list[FileEntry]:
    if values is None:
        return []
    if not items:
        return [FileEntry(_check_rel_path(k), v, mode) for k, v in sorted(values.items())]
    out = []
    for item in items:
        key = item.get("key", "")
        if key not in values:
            if optional:
                continue
            raise MountError(
                f"configmap references non-existent config key: {key}"
                if kind == "ConfigMap"
                else f"couldn't find key {key} in Secret {ns}/{name}"
            )
        out.append(
            FileEntry(_check_rel_path(item.get("path") or key), values[key], int(item.get("mode", mode)))
        )
    return out


def _downward_files(items: Sequence[Obj], pod: Obj, mode: int, alloc: Mapping[str, str]) -> list[FileEntry]:
    out = []
    for item in items:
        if "fieldRef" in item:
            text = field_ref_value(pod, item["fieldRef"].get("fieldPath", ""))
        elif "resourceFieldRef" in item:
            ref = item["resourceFieldRef"]
            text = resource_field_value(ref, _find_container(pod, ref.get("containerName", "")), alloc)
        else:
            continue
        out.append(
            FileEntry(_check_rel_path(item.get("path", "")), text.encode(), int(item.get("mode", mode)))
        )
    return out


def _lookup_volume(data: ObjectData, kind: str, name: str, optional: bool) -> Mapping[str, bytes] | None:
    table = data.secrets if kind == "Secret" else data.configmaps
    values = table.get(name)
    if values is None and not optional:
        raise MountError(f'{kind.lower()} "{name}" not found')
    return values


# Volumes made of an object's keys: (volume field, object kind, field naming the object).
_KEY_FILE_VOLUMES = (("secret", "Secret", "secretName"), ("configMap", "ConfigMap", "name"))


def volume_layout(
    volume: Obj, pod: Obj, data: ObjectData, node_allocatable: Mapping[str, str] | None = None
) -> VolumeLayout:
    """What a pod volume contains. Raises MountError (FailedMount) for a missing non-optional source."""
    name = volume["name"]
    alloc = node_allocatable or {}
    ns = data.namespace
    try:
        if "emptyDir" in volume:
            return VolumeLayout(name, "emptyDir")
        if "hostPath" in volume:
            return VolumeLayout(name, "hostPath", host_path=volume["hostPath"].get("path", ""))
        for field_name, kind, name_key in _KEY_FILE_VOLUMES:
            if field_name in volume:
                v = volume[field_name]
                mode = int(v.get("defaultMode", DEFAULT_SECRET_MODE))
                opt = bool(v.get("optional"))
                values = _lookup_volume(data, kind, v.get(name_key, ""), opt)
                found = _key_files(values, v.get("items"), mode, kind, ns, v.get(name_key, ""), opt)
                return VolumeLayout(name, "files", tuple(found), read_only=True)
        if "downwardAPI" in volume:
            v = volume["downwardAPI"]
            mode = int(v.get("defaultMode", DEFAULT_SECRET_MODE))
            return VolumeLayout(
                name, "files", tuple(_downward_files(v.get("items") or [], pod, mode, alloc)), read_only=True
            )
        if "projected" in volume:
            v = volume["projected"]
            mode = int(v.get("defaultMode", DEFAULT_SECRET_MODE))
            files: list[FileEntry] = []
            for src in v.get("sources") or []:
                if "secret" in src or "configMap" in src:
                    kind = "Secret" if "secret" in src else "ConfigMap"
                    s = src["secret" if kind == "Secret" else "configMap"]
                    opt = bool(s.get("optional"))
                    values = _lookup_volume(data, kind, s.get("name", ""), opt)
                    files += _key_files(values, s.get("items"), mode, kind, ns, s.get("name", ""), opt)
                elif "downwardAPI" in src:
                    files += _downward_files(src["downwardAPI"].get("items") or [], pod, mode, alloc)
                elif "serviceAccountToken" in src:
                    # No token issuer here; a recognisable placeholder keeps in-pod code paths working.
                    path = src["serviceAccountToken"].get("path", "token")
                    files.append(FileEntry(_check_rel_path(path), b"stagefleet-devcluster-token", mode))
            return VolumeLayout(name, "files", tuple(files), read_only=True)
    except ConfigError as e:
        raise MountError(f'MountVolume.SetUp failed for volume "{name}" : {e}') from e
    except MountError as e:
        if str(e).startswith("MountVolume"):
            raise
        raise MountError(f'MountVolume.SetUp failed for volume "{name}" : {e}') from e
    raise MountError(
        f'volume "{name}": unsupported volume type in the dev cluster '
        f"(supported: emptyDir, hostPath, secret, configMap, downwardAPI, projected)"
    )


@dataclass(frozen=True)
class Mount:
    """One bind mount the in-namespace init performs: host `source` at `target`."""

    source: str
    target: str
    read_only: bool
    is_file: bool = False


def mount_plan(
    container: Obj,
    volume_dirs: Mapping[str, str],
    read_only_volumes: Iterable[str],
    env: Mapping[str, str],
    termination_file: str,
) -> list[Mount]:
    """Bind mounts for one container, parents before children; subPath/subPathExpr resolved on the host
    side (relative to the volume directory). The termination-message file is mounted last.
    """
    ro_volumes = set(read_only_volumes)
    mounts: list[Mount] = []
    for vm in container.get("volumeMounts") or []:
        name = vm.get("name", "")
        if name not in volume_dirs:
            raise ConfigError(f'unable to find volume "{name}" for container "{container.get("name")}"')
        target = vm.get("mountPath", "")
        if not target.startswith("/"):
            raise ConfigError(f"mountPath {target!r} must be absolute")
        source = volume_dirs[name].rstrip("/")
        sub = vm.get("subPath") or ""
        if vm.get("subPathExpr"):
            sub = expand(vm["subPathExpr"], env)
        if sub:
            source = source + "/" + _check_rel_path(sub)
        ro = bool(vm.get("readOnly")) or name in ro_volumes
        mounts.append(Mount(source, _normpath(target), ro))
    mounts.sort(key=lambda m: m.target.count("/") if m.target != "/" else 0)
    term = container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
    mounts.append(Mount(termination_file, _normpath(term), False, is_file=True))
    return mounts


def _normpath(path: str) -> str:
    parts = [p for p in path.split("/") if p and p != "."]
    return "/" + "/".join(parts)


# ------------------------------------------------------------------------------------------- status


@dataclass
class ContainerRun:
    """Runtime state of one container, as the kubelet tracks it."""

    name: str
    image: str
    state: str = "waiting"  # waiting | running | terminated
    reason: str = "ContainerCreating"
    message: str = ""
    exit_code: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    restart_count: int = 0
    last_state: dict[str, Any] = field(default_factory=dict)
    container_id: str = ""

    def state_dict(self) -> dict[str, Any]:
        """The `state` field of a containerStatus."""
        if self.state == "running":
            return {"running": {"startedAt": self.started_at}}
        if self.state == "terminated":
            t: dict[str, Any] = {
                "exitCode": self.exit_code,
                "reason": self.reason,
                "startedAt": self.started_at,
                "finishedAt": self.finished_at,
            }
            if self.message:
                t["message"] = self.message
            if self.container_id:
                t["containerID"] = self.container_id
            return {"terminated": t}
        w: dict[str, Any] = {"reason": self.reason}
        if self.message:
            w["message"] = self.message
        return {"waiting": w}

    def status_dict(self, *, init: bool = False) -> dict[str, Any]:
        """A containerStatus / initContainerStatus entry."""
        running = self.state == "running"
        ready = running if not init else (self.state == "terminated" and self.exit_code == 0)
        out: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": self.image,
            "ready": ready,
            "restartCount": self.restart_count,
            "started": running,
            "state": self.state_dict(),
            "lastState": self.last_state,
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


def terminated_reason(exit_code: int) -> str:
    """Kubernetes (CRI) reason for a terminated container."""
    return "Completed" if exit_code == 0 else "Error"


def termination_message(
    file_bytes: bytes, log_tail: Callable[[], bytes] | None, exit_code: int, policy: str | None
) -> str:
    """The terminated state's message: the termination-message file (first 4096 bytes) or, with
    `FallbackToLogsOnError` and a failed container with an empty file, the log tail (80 lines/2048 bytes).
    """
    msg = file_bytes[:MAX_TERMINATION_MESSAGE]
    if not msg.strip() and policy == "FallbackToLogsOnError" and exit_code != 0 and log_tail is not None:
        tail = log_tail()
        lines = tail.splitlines(keepends=True)[-FALLBACK_LOG_LINES:]
        msg = b"".join(lines)[-FALLBACK_LOG_BYTES:]
    return msg.decode("utf-8", errors="replace")


def pod_phase(
    restart_policy: str, init: Sequence[ContainerRun], main: Sequence[ContainerRun], init_done: bool
) -> str:
    """Kubernetes `getPhase` for a pod the kubelet is running."""
    if not init_done:
        if restart_policy == "Never" and any(c.state == "terminated" and c.exit_code != 0 for c in init):
            return "Failed"
        return "Pending"
    waiting = sum(1 for c in main if c.state == "waiting" and c.restart_count == 0 and not c.last_state)
    running = sum(1 for c in main if c.state == "running")
    stopped = [c for c in main if c.state == "terminated" or (c.state == "waiting" and c.last_state)]
    failed = sum(1 for c in stopped if c.state == "terminated" and c.exit_code != 0)
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if len(stopped) == len(main):
        if restart_policy == "Always":
            return "Running"
        if any(c.state == "waiting" for c in stopped):  # waiting to restart (OnFailure backoff)
            return "Running"
        if failed:
            return "Failed" if restart_policy == "Never" else "Running"
        return "Succeeded"
    return "Pending"


def _condition(
    ctype: str, status: bool, reason: str | None, message: str | None, previous: Mapping[str, Obj], now: str
) -> dict[str, Any]:
    st = "True" if status else "False"
    prev = previous.get(ctype)
    ltt = prev.get("lastTransitionTime") if prev and prev.get("status") == st else now
    c: dict[str, Any] = {"type": ctype, "status": st, "lastProbeTime": None, "lastTransitionTime": ltt}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


def pod_conditions(
    phase: str,
    init: Sequence[ContainerRun],
    main: Sequence[ContainerRun],
    init_done: bool,
    previous: Sequence[Obj],
    now: str,
    sandbox: bool = True,
) -> list[dict[str, Any]]:
    """PodReadyToStartContainers, Initialized, Ready, ContainersReady, PodScheduled, as the kubelet sets."""
    prev = {c.get("type", ""): c for c in previous}
    terminal = phase in ("Succeeded", "Failed")
    # As the kubelet's GeneratePodInitializedCondition / GenerateContainersReadyCondition / ...Ready...
    if init_done:
        init_c = _condition(
            "Initialized", True, "PodCompleted" if phase == "Succeeded" else None, None, prev, now
        )
    else:
        pending = [c.name for c in init if not (c.state == "terminated" and c.exit_code == 0)]
        msg = f"containers with incomplete status: [{' '.join(pending)}]"
        init_c = _condition("Initialized", False, "ContainersNotInitialized", msg, prev, now)
    not_ready = [c.name for c in main if c.state != "running"]
    if terminal:
        reason = "PodCompleted" if phase == "Succeeded" else "PodFailed"
        ready = _condition("Ready", False, reason, None, prev, now)
        cready = _condition("ContainersReady", False, reason, None, prev, now)
    elif not_ready:
        msg = f"containers with unready status: [{' '.join(not_ready)}]"
        ready = _condition("Ready", False, "ContainersNotReady", msg, prev, now)
        cready = _condition("ContainersReady", False, "ContainersNotReady", msg, prev, now)
    else:
        ready = _condition("Ready", True, None, None, prev, now)
        cready = _condition("ContainersReady", True, None, None, prev, now)
    sandbox_c = _condition("PodReadyToStartContainers", sandbox and not terminal, None, None, prev, now)
    scheduled = _condition("PodScheduled", True, None, None, prev, now)
    return [sandbox_c, init_c, ready, cready, scheduled]
