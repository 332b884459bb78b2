"""What a real control plane adds on its own: the `kube-root-ca.crt` ConfigMap in every namespace
(root-ca-cert-publisher) and the pod mutations of the ServiceAccount and DefaultTolerationSeconds
admission plugins. Public API only (kubectl): the `kube` tests run on both tiers."""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable
from typing import Any

import pytest

TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_VOLUME = re.compile(r"^kube-api-access-[a-z0-9]{5}$")
PEM = re.compile(r"^-----BEGIN CERTIFICATE-----\n([A-Za-z0-9+/=\n]+)-----END CERTIFICATE-----\n?$")
PROJECTED = {
    "defaultMode": 420,
    "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {
            "downwardAPI": {
                "items": [
                    {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
                ]
            }
        },
    ],
}
NOT_READY = {
    "key": "node.kubernetes.io/not-ready",
    "operator": "Exists",
    "effect": "NoExecute",
    "tolerationSeconds": 300,
}
UNREACHABLE = {**NOT_READY, "key": "node.kubernetes.io/unreachable"}


def get(kube: Any, *args: str) -> Any:
    proc = kube.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def test_every_namespace_gets_the_root_ca_configmap_and_keeps_it(
    kube: Any, wait_until: Callable[..., Any]
) -> None:
    first = wait_until(
        lambda: get(kube, "configmap", "kube-root-ca.crt"), "kube-root-ca.crt in a new namespace"
    )
    assert set(first["data"]) == {"ca.crt"}
    body = PEM.match(first["data"]["ca.crt"])
    assert body, first["data"]["ca.crt"]
    assert base64.b64decode(body.group(1))[:1] == b"\x30"  # DER: an ASN.1 SEQUENCE
    assert first["metadata"]["annotations"]["kubernetes.io/description"].startswith("Contains a CA bundle")
    for ns in ("default", "kube-system"):
        other = json.loads(
            kube.kubectl("get", "configmap", "kube-root-ca.crt", "-n", ns, "-o", "json").stdout
        )
        assert other["data"] == first["data"]

    kube.kubectl("delete", "configmap", "kube-root-ca.crt")

    def recreated() -> Any:
        cm = get(kube, "configmap", "kube-root-ca.crt")
        return cm if cm and cm["metadata"]["uid"] != first["metadata"]["uid"] else None

    again = wait_until(recreated, "kube-root-ca.crt recreated")
    assert again["data"] == first["data"]

    patched = kube.kubectl(
        "patch",
        "configmap",
        "kube-root-ca.crt",
        "--type=merge",
        "-o",
        "json",
        "-p",
        '{"data":{"ca.crt":"tampered","extra":"x"}}',
    )
    assert json.loads(patched.stdout)["data"]["ca.crt"] == "tampered"
    wait_until(
        lambda: get(kube, "configmap", "kube-root-ca.crt")["data"] == first["data"], "the bundle restored"
    )


def test_a_deleted_namespace_goes_although_its_ca_configmap_is_republished(
    kube: Any, wait_until: Callable[..., Any]
) -> None:
    ns = kube.namespace + "-gone"
    kube.kubectl("create", "namespace", ns)
    wait_until(lambda: get(kube, "configmap", "kube-root-ca.crt", "-n", ns), "kube-root-ca.crt in it")
    kube.kubectl("delete", "namespace", ns, "--wait=false")
    wait_until(lambda: get(kube, "namespace", ns) is None, "the namespace removed", timeout=120, interval=0.5)


def pod(name: str, image: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "initContainers": [{"name": "init", "image": image, "command": ["true"]}],
            "containers": [{"name": "main", "image": image, "command": ["sleep", "3600"]}],
            **spec,
        },
    }


def create(kube: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(
        kube.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(manifest)).stdout
    )
    return out


def token_volumes(p: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in p["spec"].get("volumes") or [] if v["name"].startswith("kube-api-access-")]


def mounts_at_token_path(p: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    containers = p["spec"].get("initContainers", []) + p["spec"]["containers"]
    return {
        c["name"]: [m for m in c.get("volumeMounts") or [] if m["mountPath"] == TOKEN_PATH]
        for c in containers
    }


def service_account_ready(kube: Any, wait_until: Callable[..., Any], name: str = "default") -> None:
    """A real cluster creates `default` just after the namespace; pods naming a missing one are refused."""
    wait_until(lambda: get(kube, "serviceaccount", name), f"ServiceAccount {name}")


def test_pods_get_the_service_account_token_volume_and_default_tolerations(
    kube: Any, test_image: str, wait_until: Callable[..., Any]
) -> None:
    service_account_ready(kube, wait_until)
    p = create(kube, pod("plain", test_image))
    assert p["spec"]["serviceAccountName"] == "default" and p["spec"]["serviceAccount"] == "default"
    [vol] = token_volumes(p)
    assert TOKEN_VOLUME.match(vol["name"]), vol["name"]
    assert vol["projected"] == PROJECTED
    assert mounts_at_token_path(p) == {
        "init": [{"name": vol["name"], "readOnly": True, "mountPath": TOKEN_PATH}],
        "main": [{"name": vol["name"], "readOnly": True, "mountPath": TOKEN_PATH}],
    }
    assert p["spec"]["tolerations"] == [NOT_READY, UNREACHABLE]


def test_automount_is_decided_by_the_pod_then_its_service_account(
    kube: Any, test_image: str, wait_until: Callable[..., Any]
) -> None:
    service_account_ready(kube, wait_until)
    off = create(kube, pod("off", test_image, automountServiceAccountToken=False))
    assert token_volumes(off) == [] and mounts_at_token_path(off) == {"init": [], "main": []}
    assert off["spec"]["serviceAccountName"] == "default"

    kube.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "quiet"},
                "automountServiceAccountToken": False,
            }
        ),
    )
    service_account_ready(kube, wait_until, "quiet")
    quiet = create(kube, pod("quiet", test_image, serviceAccountName="quiet"))
    assert token_volumes(quiet) == [] and quiet["spec"]["serviceAccount"] == "quiet"
    loud = create(
        kube, pod("loud", test_image, serviceAccountName="quiet", automountServiceAccountToken=True)
    )
    assert len(token_volumes(loud)) == 1
    assert all(len(m) == 1 for m in mounts_at_token_path(loud).values())


def test_own_mounts_and_tolerations_are_respected(
    kube: Any, test_image: str, wait_until: Callable[..., Any]
) -> None:
    service_account_ready(kube, wait_until)
    manifest = pod("own", test_image, volumes=[{"name": "mine", "emptyDir": {}}])
    manifest["spec"]["containers"][0]["volumeMounts"] = [{"name": "mine", "mountPath": TOKEN_PATH}]
    manifest["spec"]["tolerations"] = [
        {
            "key": "node.kubernetes.io/not-ready",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": 60,
        }
    ]
    own = create(kube, manifest)
    [vol] = token_volumes(own)
    assert mounts_at_token_path(own) == {
        "init": [{"name": vol["name"], "readOnly": True, "mountPath": TOKEN_PATH}],
        "main": [{"name": "mine", "mountPath": TOKEN_PATH}],
    }
    assert own["spec"]["tolerations"] == [manifest["spec"]["tolerations"][0], UNREACHABLE]

    everything = create(kube, pod("tolerant", test_image, tolerations=[{"operator": "Exists"}]))
    assert everything["spec"]["tolerations"] == [{"operator": "Exists"}]
    no_execute = create(
        kube, pod("noexec", test_image, tolerations=[{"operator": "Exists", "effect": "NoExecute"}])
    )
    assert no_execute["spec"]["tolerations"] == [{"operator": "Exists", "effect": "NoExecute"}]
    no_schedule = [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoSchedule"}]
    partial = create(kube, pod("partial", test_image, tolerations=no_schedule))
    assert partial["spec"]["tolerations"] == no_schedule + [NOT_READY, UNREACHABLE]


@pytest.mark.cluster
@pytest.mark.skipif(os.geteuid() != 0, reason="pods run in private mount namespaces (root)")
def test_pods_read_the_token_volume(
    make_cluster: Callable[..., Any], test_image: str, wait_until: Callable[..., Any]
) -> None:
    k = make_cluster(nodes=1, pods_per_node=4)
    service_account_ready(k, wait_until)
    script = (
        f"cat {TOKEN_PATH}/namespace && echo && head -n 1 {TOKEN_PATH}/ca.crt && test -s {TOKEN_PATH}/token"
        f" && echo token && (touch {TOKEN_PATH}/x 2>/dev/null || echo read-only)"
    )
    manifest = pod("reader", test_image, restartPolicy="Never")
    manifest["spec"]["initContainers"][0]["command"] = ["test", "-s", f"{TOKEN_PATH}/ca.crt"]
    manifest["spec"]["containers"][0]["command"] = ["sh", "-c", script]
    create(k, manifest)

    def finished() -> str | None:
        phase = get(k, "pod", "reader")["status"].get("phase")
        return str(phase) if phase in ("Succeeded", "Failed") else None

    phase = wait_until(finished, "the pod finished", timeout=120)
    logs = k.kubectl("logs", "reader").stdout
    assert (phase, logs) == ("Succeeded", f"{k.namespace}\n-----BEGIN CERTIFICATE-----\ntoken\nread-only\n")
