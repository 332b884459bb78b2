"""Mutating admission of new pods, as kube-apiserver's default plugins do it (in their order).

* ServiceAccount: `spec.serviceAccountName` defaults to `default`; unless `automountServiceAccountToken`
  is false (the pod's own field first, then the ServiceAccount's), a projected `kube-api-access-xxxxx`
  volume (bound token, the namespace's `kube-root-ca.crt`, the namespace name) mounted read-only at
  /var/run/secrets/kubernetes.io/serviceaccount in every init container and container that has nothing
  mounted there yet.
* DefaultTolerationSeconds: NoExecute tolerations for `node.kubernetes.io/not-ready` and
  `node.kubernetes.io/unreachable`, 300 s, unless the pod already tolerates those taints.
* Priority: `spec.priority` from the pod's PriorityClass (or the `globalDefault` one; else 0), an unknown
  class refused (`priority`).
* ResourceQuota (validating, last): a pod beyond a quota's `pods` / `count/pods` is refused
  (`exceeded_pod_quota`).

Pure functions of the pod (and its ServiceAccount, looked up by the caller).
"""

from __future__ import annotations

from typing import Any

from . import objects, rootca

Obj = dict[str, Any]

DEFAULT_SERVICE_ACCOUNT = "default"
TOKEN_VOLUME_PREFIX = "kube-api-access-"
TOKEN_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_EXPIRATION_SECONDS = 3607  # the apiserver's warn-only bound token lifetime (1 h + 7 s)
PROJECTED_DEFAULT_MODE = 420  # 0644
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
DEFAULT_TOLERATION_SECONDS = 300
TOLERATED_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def service_account_name(pod: Obj) -> str:
    """The ServiceAccount the pod runs as once admitted (what the caller looks up)."""
    spec = pod.get("spec") or {}
    return str(spec.get("serviceAccountName") or spec.get("serviceAccount") or DEFAULT_SERVICE_ACCOUNT)


def is_mirror_pod(pod: Obj) -> bool:
    return MIRROR_ANNOTATION in ((pod.get("metadata") or {}).get("annotations") or {})


def token_volume(name: str) -> Obj:
    return {
        "name": name,
        "projected": {
            "defaultMode": PROJECTED_DEFAULT_MODE,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
                {"configMap": {"name": rootca.NAME, "items": [{"key": rootca.KEY, "path": rootca.KEY}]}},
                {
                    "downwardAPI": {
                        "items": [
                            {
                                "path": "namespace",
                                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                            }
                        ]
                    }
                },
            ],
        },
    }


def _automount(pod: Obj, service_account: Obj | None) -> bool:
    own = (pod.get("spec") or {}).get("automountServiceAccountToken")
    if own is not None:
        return bool(own)
    sa_says = (service_account or {}).get("automountServiceAccountToken")
    return True if sa_says is None else bool(sa_says)


def service_account(pod: Obj, sa: Obj | None) -> None:
    """The ServiceAccount plugin's mutations of a new pod. `sa` is the pod's ServiceAccount
    (`service_account_name`), None when there is none: whether that pod may be created at all is the
    caller's decision (a real server refuses it); here it only means no `automountServiceAccountToken`."""
    if is_mirror_pod(pod):
        return
    spec = pod.setdefault("spec", {})
    spec["serviceAccountName"] = service_account_name(pod)
    spec["serviceAccount"] = spec["serviceAccountName"]
    if not _automount(pod, sa):
        return
    volumes = spec.get("volumes") or []
    existing = next(
        (v["name"] for v in volumes if str(v.get("name", "")).startswith(TOKEN_VOLUME_PREFIX)), None
    )
    name = existing or TOKEN_VOLUME_PREFIX + objects.random_suffix()
    needed = False
    for kind in ("initContainers", "containers"):
        for c in spec.get(kind) or []:
            mounts = c.get("volumeMounts") or []
            if not any(m.get("mountPath") == TOKEN_MOUNT_PATH for m in mounts):
                c["volumeMounts"] = [*mounts, {"name": name, "readOnly": True, "mountPath": TOKEN_MOUNT_PATH}]
                needed = True
    if needed and existing is None:
        spec["volumes"] = [*volumes, token_volume(name)]
    if sa is not None and not spec.get("imagePullSecrets") and sa.get("imagePullSecrets"):
        spec["imagePullSecrets"] = [dict(s) for s in sa["imagePullSecrets"]]


def _tolerates(toleration: Obj, key: str) -> bool:
    return toleration.get("key") in (None, "", key) and toleration.get("effect") in (None, "", "NoExecute")


def default_toleration_seconds(pod: Obj) -> None:
    """The DefaultTolerationSeconds plugin: 300 s NoExecute tolerations of not-ready/unreachable nodes."""
    spec = pod.setdefault("spec", {})
    tolerations = list(spec.get("tolerations") or [])
    added = [
        {
            "key": key,
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": DEFAULT_TOLERATION_SECONDS,
        }
        for key in TOLERATED_TAINTS
        if not any(_tolerates(t, key) for t in tolerations)
    ]
    if added:
        spec["tolerations"] = tolerations + added


POD_QUOTA_KEYS = ("pods", "count/pods")


def _counts_against_quota(pod: Obj) -> bool:
    """The quota's pod evaluator: a pod in a terminal phase, or deleting, uses no quota (kube's
    `QuotaV1Pod`; it also frees a deleting pod only once its grace period is over: here at once)."""
    return ((pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            and not (pod.get("metadata") or {}).get("deletionTimestamp"))


def exceeded_pod_quota(quotas: list[Obj], pods: list[Obj]) -> str | None:
    """The ResourceQuota plugin's refusal of one more pod in a namespace, in its words, or None.

    Only the pod count (`pods`, `count/pods`) is enforced: the emulator's pods request nothing that the
    other quota resources (cpu, memory, ...) would count. The first quota (by name) that one more pod
    would exceed refuses it, like the plugin: ``exceeded quota: NAME, requested: pods=1, used: pods=N,
    limited: pods=M``. Usage is counted from the pods themselves at once, where a real cluster's
    resourcequota controller writes it into the quota's status a moment later.
    """
    used = sum(1 for p in pods if _counts_against_quota(p))
    for quota in sorted(quotas, key=lambda q: str(q["metadata"]["name"])):
        hard = (quota.get("spec") or {}).get("hard") or {}
        for key in POD_QUOTA_KEYS:
            limit = str(hard.get(key, ""))
            if limit.isdigit() and used + 1 > int(limit):  # a pod count: a plain integer
                return (f"exceeded quota: {quota['metadata']['name']}, requested: {key}=1, "
                        f"used: {key}={used}, limited: {key}={limit}")
    return None


SYSTEM_PRIORITY_CLASSES = {"system-cluster-critical": 2000000000, "system-node-critical": 2000001000}


def priority(pod: Obj, classes: list[Obj]) -> str | None:
    """The Priority plugin: `spec.priority` (and `preemptionPolicy`) from the pod's PriorityClass, or from
    the class marked `globalDefault`, else 0; returns its refusal (kube's words) for a class that does not
    exist, or for a number in the pod that differs from the class's."""
    spec = pod.setdefault("spec", {})
    name = spec.get("priorityClassName") or ""
    by_name = {str(c["metadata"]["name"]): c for c in classes}
    found: Obj | None
    if name:
        found = by_name.get(name)
        if found is None and name in SYSTEM_PRIORITY_CLASSES:
            found = {"value": SYSTEM_PRIORITY_CLASSES[name]}
        if found is None:
            return f"no PriorityClass with name {name} was found"
    else:
        found = next((c for c in classes if c.get("globalDefault")), None)
        if found is not None:
            spec["priorityClassName"] = found["metadata"]["name"]
    value = int(found.get("value", 0)) if found is not None else 0
    if spec.get("priority") is not None and spec["priority"] != value:
        return (f"the integer value of priority ({spec['priority']}) must not be provided in pod spec; "
                f"priority admission controller computed {value} from the given PriorityClass name")
    spec["priority"] = value
    if found is not None:
        spec["preemptionPolicy"] = found.get("preemptionPolicy") or "PreemptLowerPriority"
    return None
