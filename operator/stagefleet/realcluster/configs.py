"""Pure: the real tier's configuration files and command lines, from paths and ports.

Everything a component reads is generated here so that the flags verified on these machines
(`../shared/k8s/README.md`) live in one place and can be unit-tested without starting anything.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Services get loopback addresses: a host-network pod dialling one stays on this machine (serviceproxy.py).
# Each cluster takes its own /24 (127.200.N.0/24), so that several tiers can share the machine.


def service_cidr(n: int) -> str:
    return f"127.200.{n}.0/24"


def kubernetes_service_ip(n: int) -> str:
    """The first address of the range: the API server's `kubernetes` Service in `default`."""
    return f"127.200.{n}.1"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
POD_NET_PLUGIN = "stagefleet-pod-net"
# Pod addresses: a loopback range, so anything that dials a pod IP from the host stays on this machine.
POD_NET_PREFIX = "127.100"


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int


def kubeconfig(
    server: str, ca_pem: bytes, user: str, cert_pem: bytes, key_pem: bytes, namespace: str = "default"
) -> dict[str, Any]:
    """A self-contained kubeconfig (certificates embedded) for one client-certificate user."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "real", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)},
            }
        ],
        "contexts": [{"name": "real", "context": {"cluster": "real", "user": user, "namespace": namespace}}],
        "current-context": "real",
    }


def token_kubeconfig(
    server: str, ca_pem: bytes, user: str, token: str, namespace: str = "default"
) -> dict[str, Any]:
    """A kubeconfig that authenticates with a bearer token (e.g. a ServiceAccount's)."""
    cfg = kubeconfig(server, ca_pem, user, b"", b"", namespace)
    cfg["users"] = [{"name": user, "user": {"token": token}}]
    return cfg


def etcd_argv(binary: str, data_dir: Path, ports: Ports, name: str = "real") -> list[str]:
    client = f"http://127.0.0.1:{ports.etcd_client}"
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    return [
        binary,
        "--name",
        name,
        "--data-dir",
        str(data_dir),
        "--listen-client-urls",
        client,
        "--advertise-client-urls",
        client,
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
        "--initial-cluster",
        f"{name}={peer}",
        "--log-level",
        "warn",
        "--unsafe-no-fsync",
    ]  # a throwaway test store: durability buys nothing, fsync costs seconds


def apiserver_argv(
    binary: str, pki: Path, ports: Ports, service_net: int, audit: tuple[Path, Path] | None = None
) -> list[str]:
    """TLS, client-certificate auth, Node+RBAC authorization and the default admission chain
    (ServiceAccount, DefaultTolerationSeconds, PodSecurity, ...) plus NodeRestriction. ``audit``: (policy
    file, log file) — JSON lines written before the response returns (blocking mode)."""
    audit_flags = [] if audit is None else [
        f"--audit-policy-file={audit[0]}",
        f"--audit-log-path={audit[1]}",
        "--audit-log-format=json",
        "--audit-log-mode=blocking",
    ]
    return [
        binary,
        f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={ports.apiserver}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={service_cidr(service_net)}",
        "--endpoint-reconciler-type=none",
        "--allow-privileged=true",
        "--feature-gates=CustomResourceValidationExpressions=true",
        # nodes are named by a loopback address (see node_name): logs/exec reach the kubelet on loopback
        "--kubelet-preferred-address-types=Hostname",
        f"--kubelet-client-certificate={pki / 'admin.crt'}",
        f"--kubelet-client-key={pki / 'admin.key'}",
        "--profiling=false",
        *audit_flags,
        "--v=0",
    ]


def controller_manager_argv(
    binary: str, pki: Path, kubeconfig_path: Path, ports: Ports, service_net: int
) -> list[str]:
    return [
        *_control_plane_component(binary, kubeconfig_path, ports.controller_manager),
        "--controllers=*",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}",
        f"--cluster-signing-key-file={pki / 'ca.key'}",
        f"--service-cluster-ip-range={service_cidr(service_net)}",
        "--profiling=false",
        "--v=0",
        # a lost node is noticed after 16 s instead of 40 s (kubelets here report every second)
        "--node-monitor-period=2s",
        "--node-monitor-grace-period=16s",
    ]


def scheduler_argv(binary: str, kubeconfig_path: Path, ports: Ports) -> list[str]:
    return [*_control_plane_component(binary, kubeconfig_path, ports.scheduler), "--profiling=false", "--v=0"]


def _control_plane_component(binary: str, kubeconfig_path: Path, port: int) -> list[str]:
    """What the controller-manager and the scheduler share: one kubeconfig for talking to the API server
    and for checking who calls their own port, on loopback, as the only instance (no leader election)."""
    k = str(kubeconfig_path)
    return [binary, f"--kubeconfig={k}", f"--authentication-kubeconfig={k}",
            f"--authorization-kubeconfig={k}", "--bind-address=127.0.0.1", f"--secure-port={port}",
            "--leader-elect=false"]


def node_name(index: int) -> str:
    """Node N is named (and addressed) 127.0.1.N: the kubelet refuses a loopback --node-ip, but the API
    server dials a node by its Hostname address first, so logs and exec stay on loopback."""
    return f"127.0.1.{index}"


def containerd_config(
    root: Path,
    state: Path,
    socket: Path,
    cni_bin: Path,
    cni_conf: Path,
    registry_dir: Path,
    sandbox_image: str,
) -> str:
    """containerd 1.6 (CRI) with everything under the node's own directories; the settings these machines
    need: no OOM score adjustment (root lacks CAP_SYS_RESOURCE here), no AppArmor, cgroupfs."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{root}"
state = "{state}"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
[{cri}]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{state}/runc"
[{cri}.cni]
  bin_dir = "{cni_bin}"
  conf_dir = "{cni_conf}"
[{cri}.registry]
  config_path = "{registry_dir}"
"""


def registry_hosts_toml(host: str) -> str:
    """containerd's per-registry hosts.toml for a plain-HTTP registry (e.g. the tests' loopback one)."""
    return (
        f'server = "http://{host}"\n\n[host."http://{host}"]\n'
        '  capabilities = ["pull", "resolve", "push"]\n  skip_verify = true\n'
    )


def cni_conflist() -> str:
    return json.dumps(
        {"cniVersion": "0.4.0", "name": "stagefleet", "plugins": [{"type": POD_NET_PLUGIN}]}, indent=1
    )


def pod_net_plugin() -> str:
    """A CNI plugin that gives a pod's netns an eth0 (one end of a veth pair whose other end stays in the
    same netns) with a /32 from a loopback range and no routes: pods get an address and a Ready node, and
    nothing on the host (links, routes, iptables) changes. Pods that must reach the host use hostNetwork."""
    return f"""#!/bin/sh
# CNI plugin written by stagefleet's real test tier (see configs.pod_net_plugin).
set -eu
case "${{CNI_COMMAND:-}}" in
ADD)
  cat >/dev/null
  h=$(printf %s "$CNI_CONTAINERID" | cksum | cut -d' ' -f1)
  ip="{POD_NET_PREFIX}.$(( (h / 254) % 254 + 1 )).$(( h % 254 + 1 ))"
  nsenter --net="$CNI_NETNS" ip link add "$CNI_IFNAME" type veth peer name sfpeer0
  nsenter --net="$CNI_NETNS" ip addr add "$ip/32" dev "$CNI_IFNAME"
  nsenter --net="$CNI_NETNS" ip link set sfpeer0 up
  nsenter --net="$CNI_NETNS" ip link set "$CNI_IFNAME" up
  printf '{{"cniVersion":"0.4.0","interfaces":[{{"name":"%s","sandbox":"%s"}}],'\\
'"ips":[{{"version":"4","address":"%s/32","interface":0}}],"dns":{{}}}}' "$CNI_IFNAME" "$CNI_NETNS" "$ip"
  ;;
DEL|CHECK) cat >/dev/null; exit 0 ;;
VERSION) printf '{{"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0"]}}' ;;
*) echo "unknown CNI_COMMAND ${{CNI_COMMAND:-}}" >&2; exit 4 ;;
esac
"""


def kubelet_config(
    *,
    address: str,
    port: int,
    pki: Path,
    cgroup_root: str,
    max_pods: int,
    pod_manifest_dir: Path | None = None,
) -> dict[str, Any]:
    """KubeletConfiguration: webhook authn/authz with the cluster CA, cgroupfs under a cgroup root of its
    own (so several kubelets share the machine), the host's iptables left alone, fast status updates and
    thresholds that never evict or garbage-collect on a busy test box."""
    cfg: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": address,
        "port": port,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "cgroupsPerQOS": True,
        "failSwapOn": False,
        "makeIPTablesUtilChains": False,
        "nodeStatusUpdateFrequency": "1s",
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "5s",
        "fileCheckFrequency": "5s",
        "kubeAPIQPS": 50,
        "kubeAPIBurst": 100,
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "evictionPressureTransitionPeriod": "5s",
        "maxPods": max_pods,
        "clusterDomain": "cluster.local",
        "resolvConf": "/etc/resolv.conf",
        "protectKernelDefaults": False,
        "enforceNodeAllocatable": ["pods"],
    }
    if pod_manifest_dir is not None:
        cfg["staticPodPath"] = str(pod_manifest_dir)
    return cfg


def kubelet_argv(
    binary: str,
    *,
    kubeconfig_path: Path,
    config_path: Path,
    socket: Path,
    root_dir: Path,
    name: str,
    labels: Sequence[str] = (),
) -> list[str]:
    argv = [
        binary,
        f"--kubeconfig={kubeconfig_path}",
        f"--config={config_path}",
        "--container-runtime=remote",
        f"--container-runtime-endpoint=unix://{socket}",
        f"--root-dir={root_dir}",
        f"--cert-dir={root_dir / 'pki'}",
        f"--hostname-override={name}",
        "--v=0",
    ]
    if labels:
        argv.append("--node-labels=" + ",".join(labels))
    return argv
