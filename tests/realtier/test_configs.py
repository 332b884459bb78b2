"""Pure parts of the real tier (stagefleet.realcluster.configs), plus its CNI plugin run for real."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from stagefleet.realcluster import audit, configs

PORTS = configs.Ports(etcd_client=1, etcd_peer=2, apiserver=3, controller_manager=4, scheduler=5)


def test_kubeconfig_embeds_the_ca_and_client_certificate() -> None:
    cfg = configs.kubeconfig("https://127.0.0.1:3", b"CA", "admin", b"CERT", b"KEY")
    (cluster,) = cfg["clusters"]
    assert cluster["cluster"] == {"server": "https://127.0.0.1:3",
                                  "certificate-authority-data": base64.b64encode(b"CA").decode()}
    (user,) = cfg["users"]
    assert base64.b64decode(user["user"]["client-certificate-data"]) == b"CERT"
    assert base64.b64decode(user["user"]["client-key-data"]) == b"KEY"
    tok = configs.token_kubeconfig("https://127.0.0.1:3", b"CA", "sa", "T0K")
    assert tok["users"] == [{"name": "sa", "user": {"token": "T0K"}}]
    assert yaml.safe_load(yaml.safe_dump(cfg)) == cfg


def test_apiserver_runs_with_auth_authz_and_admission_a_user_would_meet(tmp_path: Path) -> None:
    argv = configs.apiserver_argv("kube-apiserver", tmp_path, PORTS, 7)
    flags = dict(a.removeprefix("--").split("=", 1) for a in argv[1:])
    assert flags["authorization-mode"] == "Node,RBAC"
    assert "NodeRestriction" in flags["enable-admission-plugins"]
    assert "disable-admission-plugins" not in flags  # ServiceAccount, PodSecurity, ... stay on
    assert flags["client-ca-file"] == str(tmp_path / "ca.crt")
    assert flags["bind-address"] == "127.0.0.1" and flags["secure-port"] == "3"
    assert flags["kubelet-preferred-address-types"] == "Hostname"  # nodes are dialled on loopback
    assert flags["service-cluster-ip-range"] == "127.200.7.0/24"  # Services on loopback too
    assert configs.kubernetes_service_ip(7) == "127.200.7.1"


def test_apiserver_audit_logs_pod_creations_only(tmp_path: Path) -> None:
    flags = dict(a.removeprefix("--").split("=", 1) for a in configs.apiserver_argv(
        "kube-apiserver", tmp_path, PORTS, 7, audit=(tmp_path / "policy.yaml", tmp_path / "audit.log"))[1:])
    assert flags["audit-policy-file"] == str(tmp_path / "policy.yaml")
    assert flags["audit-log-path"] == str(tmp_path / "audit.log")
    assert flags["audit-log-format"] == "json"
    plain = configs.apiserver_argv("kube-apiserver", tmp_path, PORTS, 7)
    assert not any(a.startswith("--audit") for a in plain)
    (first, last) = audit.POLICY["rules"]
    assert first["verbs"] == ["create"] and first["resources"] == [{"group": "", "resources": ["pods"]}]
    assert first["level"] == "Metadata" and last == {"level": "None"}


def _event(verb: str = "create", code: int = 201, stage: str = "ResponseComplete", **ref: str) -> str:
    obj = {"resource": "pods", "namespace": "ns1", "name": "p1", "apiVersion": "v1", **ref}
    return json.dumps({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "stage": stage,
                       "verb": verb, "objectRef": {k: v for k, v in obj.items() if v},
                       "responseStatus": {"metadata": {}, "code": code}})


def test_audit_log_lines_give_each_created_pod() -> None:
    lines = [
        _event(),
        _event(name="p2", namespace="ns2"),
        _event(code=409),  # AlreadyExists: not created
        _event(code=422, name="bad"),
        _event(stage="RequestReceived", name="p3"),  # not a completed request
        _event(verb="delete"),
        _event(subresource="binding"),  # the scheduler binding p1, not a creation
        _event(resource="configmaps", name="cm"),
        _event(apiGroup="stagefleet.io", resource="pods", name="x"),  # a custom "pods" resource
        "",
        '{"kind": "Event", "stage": "ResponseComp',  # torn last line while the server writes
        _event(name="p1"),  # a second creation of the same name (after a delete) is listed again
    ]
    assert audit.pod_creations(lines) == [("ns1", "p1"), ("ns2", "p2"), ("ns1", "p1")]
    assert audit.pod_creations([]) == []


def test_node_names_are_loopback_addresses() -> None:
    import ipaddress

    names = [configs.node_name(i) for i in range(1, 5)]
    assert len(set(names)) == 4
    assert all(ipaddress.ip_address(n).is_loopback for n in names)


def test_containerd_config_has_what_these_machines_need(tmp_path: Path) -> None:
    text = configs.containerd_config(tmp_path / "r", tmp_path / "s", tmp_path / "sock", tmp_path / "bin",
                                     tmp_path / "conf", tmp_path / "certs", "reg/pause:1")
    assert "restrict_oom_score_adj = true" in text
    assert "SystemdCgroup = false" in text and "disable_apparmor = true" in text
    assert f'root = "{tmp_path / "r"}"' in text and 'sandbox_image = "reg/pause:1"' in text
    assert 'server = "http://127.0.0.1:5000"' in configs.registry_hosts_toml("127.0.0.1:5000")


def test_kubelet_config_leaves_the_host_alone(tmp_path: Path) -> None:
    cfg = configs.kubelet_config(address="127.0.1.1", port=10, pki=tmp_path, cgroup_root="/x", max_pods=3)
    assert cfg["makeIPTablesUtilChains"] is False and cfg["failSwapOn"] is False
    assert cfg["cgroupRoot"] == "/x" and cfg["cgroupDriver"] == "cgroupfs"
    assert cfg["authentication"]["anonymous"]["enabled"] is False
    assert cfg["authorization"]["mode"] == "Webhook"


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_cni_plugin_gives_the_pod_netns_an_address_and_touches_nothing_else(tmp_path: Path) -> None:
    plugin = tmp_path / configs.POD_NET_PLUGIN
    plugin.write_text(configs.pod_net_plugin())
    plugin.chmod(0o755)
    host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    ns = f"sf-cni-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123",
               "CNI_NETNS": f"/var/run/netns/{ns}", "CNI_IFNAME": "eth0", "CNI_PATH": str(tmp_path)}
        out = subprocess.run([str(plugin)], input=configs.cni_conflist(), env=env, capture_output=True,
                             text=True, check=True).stdout
        result = json.loads(out)
        address = result["ips"][0]["address"]
        assert address.startswith(configs.POD_NET_PREFIX + ".") and address.endswith("/32")
        inside = subprocess.run(["ip", "-n", ns, "-o", "addr", "show", "eth0"], capture_output=True,
                                text=True, check=True).stdout
        assert address in inside
        routes = subprocess.run(["ip", "-n", ns, "route"], capture_output=True, text=True, check=True).stdout
        assert routes.strip() == ""  # no way out of the pod's namespace
        version = subprocess.run([str(plugin)], env={**env, "CNI_COMMAND": "VERSION"}, capture_output=True,
                                 text=True, check=True).stdout
        assert "0.4.0" in json.loads(version)["supportedVersions"]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    after = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert after == host_links


def test_controller_manager_and_scheduler_authenticate_with_their_kubeconfig(tmp_path: Path) -> None:
    kc = tmp_path / "k"
    cm = configs.controller_manager_argv("kcm", tmp_path, kc, PORTS, 7)
    sched = configs.scheduler_argv("ks", kc, PORTS)
    for argv, port in ((cm, PORTS.controller_manager), (sched, PORTS.scheduler)):
        flags = dict(a.removeprefix("--").split("=", 1) for a in argv[1:])
        assert flags["kubeconfig"] == flags["authentication-kubeconfig"] == flags["authorization-kubeconfig"]
        assert flags["kubeconfig"] == str(kc) and flags["secure-port"] == str(port)
        assert flags["leader-elect"] == "false" and flags["bind-address"] == "127.0.0.1"
    cm_flags = dict(a.removeprefix("--").split("=", 1) for a in cm[1:])
    assert cm_flags["use-service-account-credentials"] == "true"
    assert cm_flags["service-cluster-ip-range"] == "127.200.7.0/24"
