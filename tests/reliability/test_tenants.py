"""Issue #14's evidence: a second namespace's user tries each tenant hole against one shared operator, and
gets a rejection or a clear reason each time, while the victim namespace's build runs beside it untouched.

One operator watches both namespaces (a farm shared by two teams) with a strict admin policy. Namespace
``victim`` (the suite's ``ns``) builds DIAMOND as ``app``; namespace ``attacker-*`` meanwhile tries, each as
its own object:

* paths leaving the source (``spec.dockerfile``, ``spec.source.contextDir``) and git URLs carrying a
  password or a token as the user name: refused at apply (422) by the CRD's patterns, naming the field,
  never stored;
* fields escalating past the policy (builder image, ServiceAccount, key-less and control-plane
  tolerations, a nodeSelector key, oversized per-stage resources, ``file://`` and ``git://`` sources, a
  cache repository in the victim namespace's tree):
  ``Failed``, ``Stalled=True`` reason ``PolicyViolation``, the message naming field and setting, no pod;
* the victim's Secret by name: its own namespace has no such Secret, ``Stalled`` reason ``SecretNotFound``;
* black-holed git sources (a loopback socket that accepts and never answers), more of them than the
  operator has reconcile threads: they wait in ``Planning`` and end ``SourceTimeout``, while the victim's
  build is planned and started meanwhile;
* a build of the same name with the same output image: it builds too, but with a cache repository and a
  stage repository of its own namespace, never the victim's;
* forged worker pods in its own namespace with the victim pod's labels and a termination message
  claiming success with a digest of its choosing, one with the victim pod's owner reference (deleted as
  an orphan), one owned by its own ImageBuild (runs and ends with its claim): neither is ever adopted.

The victim's build must succeed with a clean ledger (``assert_clean_success``: one pod per group, each
worker run once, the digests in status exactly what its own workers reported), see no object, pod or event
of the attacker's, and the operator must not crash on any of it. SIMULATED worker. The attacker acts with
the tests' own credentials: what is tested is the operator, not the cluster's RBAC (which would stop a
real tenant from creating pods in the victim's namespace in the first place; forging a pod *there* is
tests/e2e/test_trust.py's case).
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest import Kubectl
from tiers import BUILD_NAMESPACE_LABELS

from .conftest import (
    Api,
    Evidence,
    OperatorFactory,
    RCluster,
    assert_clean_success,
    fake_manifest,
    operator_crashes,
    poll,
    terminal,
)

pytestmark = [pytest.mark.cluster]

SOURCE_TIMEOUT = 24  # seconds: each black-holed source gives up after this (the default is 60)
CONCURRENCY = 3  # reconcile threads; HOLES black-holed builds would have held them all before #14 item 6
HOLES = CONCURRENCY + 2
# The admin's policy: flags after the suite's widened TEST_POLICY, so these win (argparse: last one counts).
MAX_STAGE = {"cpu": "2", "memory": "4Gi"}
STRICT_POLICY = [
    "--allowed-source-schemes", "https,ssh",
    "--allowed-service-accounts", "none",
    "--allowed-toleration-keys", "none",
    "--allowed-node-selector-keys", "kubernetes.io/arch,kubernetes.io/os",
    "--max-stage-resources", json.dumps(MAX_STAGE),
    # Everyone's outputs live under rel/ here (fake_manifest); a namespace's own tree is its alone.
    "--allowed-push-repositories", "127.0.0.1:9/rel/*,127.0.0.1:9/{namespace}/*",
]
FORGED_DIGEST = "sha256:" + "e" * 64
# Mounts the Secret `canary` (key `value`): the victim's namespace has one, the attacker's has not.
STEAL = "FROM busybox:1.36\nRUN --mount=type=secret,id=tok cat /run/secrets/tok\n"


class BlackHole:
    """A loopback TCP server that accepts every connection and never sends a byte (nor reads one)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="black-hole", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:  # the accept timeout, or the socket closed by close()
                continue
            self.held.append(conn)

    def connections(self) -> int:
        return len(self.held)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        for conn in self.held:
            conn.close()


def _git_manifest(name: str, url: str, **spec: Any) -> dict[str, Any]:
    m = fake_manifest(name, **spec)
    m["spec"]["source"] = {"git": {"url": url, "revision": "main"}}
    return m


def _refused(atk: Api, manifest: dict[str, Any], field: str) -> str:
    """Creating ``manifest`` is refused by the API server with 422 naming ``field``; the object is not
    stored. Returns the API's message."""
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as info:
        atk.create(manifest)
    assert info.value.status == 422, (info.value.status, info.value.body)
    message = str(json.loads(info.value.body).get("message"))
    assert field in message, message
    with pytest.raises(ApiException) as gone:
        atk.ib(manifest["metadata"]["name"])
    assert gone.value.status == 404
    return message


def _args(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def _pod_args(pod: dict[str, Any]) -> list[str]:
    return list(pod["spec"]["containers"][0].get("args") or [])


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or () if c["type"] == kind), {})


def _forged_pod(name: str, model: dict[str, Any], owners: list[dict[str, Any]],
                rcluster: RCluster) -> dict[str, Any]:
    """A pod with ``model``'s labels (its ImageBuild's uid, generation, group, attempt) and ``owners``,
    whose container only writes a termination message claiming success with FORGED_DIGEST."""
    labels = dict(model["metadata"]["labels"])
    claim = json.dumps({"ok": True, "group": labels["stagefleet.io/group"],
                        "image": "127.0.0.1:9/rel/app:forged", "digest": FORGED_DIGEST,
                        "cachedSteps": 0, "steps": 1, "stages": [], "error": None})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels, "ownerReferences": owners},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [{
                "name": "worker",
                # real tier: an image the nodes can pull (the dev kubelet runs /bin/sh of the host)
                "image": rcluster.fake_image or "busybox:1.36",
                "command": ["/bin/sh", "-c", f"printf '%s' '{claim}' > /dev/termination-log"],
            }],
        },
    }


def _records_of(records: Path, cache_repo: str, into: Path) -> Path:
    """The simulated workers' records of one namespace's build (its pods' --cache-repo), copied into
    ``into``: both namespaces' `app` push to the same output, which is how read_records tells builds
    apart."""
    into.mkdir()
    for p in sorted(records.glob("*.json")):
        if cache_repo in _args(json.loads(p.read_text())["argv"], "--cache-repo"):
            shutil.copy(p, into / p.name)
    return into


@pytest.fixture
def attacker(rcluster: RCluster, evidence: Evidence) -> str:
    """The second tenant's namespace, labelled like the suite's ``ns`` (Pod Security); kept until the
    session ends, like ``ns``, and searched by test_zz_canary too."""
    name = f"attacker-{uuid.uuid4().hex[:5]}"
    meta = {"name": name, "labels": BUILD_NAMESPACE_LABELS}
    Kubectl(rcluster.cluster, "default").apply({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
    evidence.namespaces.append(name)
    return name


@pytest.fixture
def atk(rcluster: RCluster, attacker: str) -> Iterator[Api]:
    a = Api(rcluster.cluster.kubeconfig, attacker)
    yield a
    a.close()


@pytest.fixture
def hole() -> Iterator[BlackHole]:
    h = BlackHole()
    yield h
    h.close()


def test_a_second_namespace_tries_each_hole_and_the_victims_build_is_unaffected(
    api: Api,
    atk: Api,
    hole: BlackHole,
    make_operator: OperatorFactory,
    rcluster: RCluster,
    records: Path,
    tmp_path: Path,
) -> None:
    victim, attacker = api.namespace, atk.namespace
    op = make_operator(
        sleep=1.0,
        slow={"g1": 5.0},  # the victim's first group runs while the forged pods claim its result
        more=["--namespace", attacker, "--source-timeout", str(SOURCE_TIMEOUT), "--concurrency",
              str(CONCURRENCY), *STRICT_POLICY],
    )

    # --- refused at apply: paths leaving the source, credentials in the git URL (CRD patterns) ---------
    escape = fake_manifest("escape-dockerfile")
    escape["spec"]["dockerfile"] = "../../etc/passwd"
    msg = _refused(atk, escape, "spec.dockerfile")
    assert "root:" not in msg, msg
    absolute = fake_manifest("absolute-dockerfile")
    absolute["spec"]["dockerfile"] = "/etc/passwd"
    _refused(atk, absolute, "spec.dockerfile")
    context = _git_manifest("escape-context", "https://git.example.com/org/app.git")
    context["spec"]["source"]["contextDir"] = "../../etc"
    _refused(atk, context, "spec.source.contextDir")
    password = _git_manifest("password-url", "https://deploy:hunter2-token@git.example.com/org/app.git")
    _refused(atk, password, "spec.source.git.url")
    token = _git_manifest("token-url", "https://ghp_token4711@github.com/org/app.git")  # token as user name
    _refused(atk, token, "spec.source.git.url")

    # --- black-holed sources, first: each holds a git process, none may hold a reconcile thread ---------
    for i in range(HOLES):
        atk.create(_git_manifest(f"hole-{i}", f"https://127.0.0.1:{hole.port}/org/repo-{i}.git"))
    poll(lambda: hole.connections() >= HOLES, f"{HOLES} git processes connected to the black hole", op,
         timeout=60)

    # --- escalations past the admin policy, the victim's Secret by name, the same name and output ------
    builder = "127.0.0.1:9/evil/root-shell:1"
    refused_by_policy: dict[str, tuple[dict[str, Any], list[str]]] = {
        "builder": (fake_manifest("builder", builderImage=builder),
                    [f"spec.builderImage: '{builder}' is not an allowed builder image",
                     "--allowed-builder-images"]),
        "service-account": (fake_manifest("service-account", serviceAccountName="stagefleet-operator"),
                            ["spec.serviceAccountName: 'stagefleet-operator' is not allowed",
                             "--allowed-service-accounts"]),
        "tolerate": (fake_manifest("tolerate", tolerations=[
            {"operator": "Exists"},
            {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
        ]), ["spec.tolerations[0]: a toleration without a key (it tolerates every taint) is not allowed",
             "spec.tolerations[1]: key 'node-role.kubernetes.io/control-plane' is not allowed",
             "--allowed-toleration-keys"]),
        "node-selector": (fake_manifest("node-selector", nodeSelector={"kubernetes.io/hostname": "cp-1"}),
                          ["spec.nodeSelector.kubernetes.io/hostname: the key is not allowed",
                           "--allowed-node-selector-keys"]),
        "hog": (fake_manifest("hog", resources={
            "default": {"requests": {"cpu": "64", "memory": "1Gi"}},
            "stages": {"final": {"limits": {"memory": "512Gi"}}},
        }), ["spec.resources.default.requests.cpu: 64 is over the per-stage maximum 2",
             "spec.resources.stages.final.limits.memory: 512Gi is over the per-stage maximum 4Gi",
             "--max-stage-resources"]),
        "local-files": (_git_manifest("local-files", "file:///etc"),
                        ["spec.source.git.url: the file scheme is not allowed for cluster builds",
                         "--allowed-source-schemes"]),
        "plain-git": (_git_manifest("plain-git", "git://127.0.0.1:9/org/app.git"),
                      ["spec.source.git.url: the git scheme is not allowed for cluster builds",
                       "--allowed-source-schemes"]),
        "poison-cache": (fake_manifest("poison-cache", cache={"repository": f"127.0.0.1:9/{victim}/cache"}),
                         [f"spec.cache.repository: repository '127.0.0.1:9/{victim}/cache' is not one builds "
                          f"in namespace '{attacker}' may push to", "--allowed-push-repositories"]),
    }
    for manifest, _ in refused_by_policy.values():
        atk.create(manifest)
    atk.create(fake_manifest("steal", STEAL))
    atk.create(fake_manifest("app"))  # the victim's name and output image

    # --- the victim's build -------------------------------------------------------------------------------
    api.create(fake_manifest("app"))
    first = poll(lambda: next((p for p in api.pods() if p["metadata"]["labels"].get("stagefleet.io/group")),
                              None), "the victim's first pod", op, timeout=120)
    # Planned and started while every black-holed build is still waiting for its source.
    for i in range(HOLES):
        st = atk.ib(f"hole-{i}").get("status") or {}
        assert st.get("phase") == "Planning", (f"hole-{i}", st)
        assert st.get("message", "").startswith(
            f"resolving source: spec.source.git.url https://127.0.0.1:{hole.port}/org/repo-{i}.git"), st

    # --- forged worker pods in the attacker's namespace, copying a victim pod's identity -------------------
    # "forged": the victim pod's labels and owner reference, as test_trust.py forges one; "forged-owned": the
    # same labels but owned by the attacker's own `app`, so that nothing deletes it as an orphan. Both
    # claim success for the victim's group with a digest of their own.
    victim_uid = first["metadata"]["labels"]["stagefleet.io/imagebuild-uid"]  # (what the forgeries carry)
    copycat_uid = atk.ib("app")["metadata"]["uid"]
    assert copycat_uid != victim_uid
    atk._retry(lambda: atk.core.create_namespaced_pod(
        attacker, _forged_pod("forged", first, first["metadata"]["ownerReferences"], rcluster)))
    owned = [{**first["metadata"]["ownerReferences"][0], "uid": copycat_uid}]
    atk._retry(lambda: atk.core.create_namespaced_pod(
        attacker, _forged_pod("forged-owned", first, owned, rcluster)))

    # --- the victim: succeeded, clean, from its own workers only ------------------------------------------
    obj = terminal(api, "app", op)
    base = "127.0.0.1:9/rel/app"
    mine = _records_of(records, f"{base}/cache/{victim}", tmp_path / "victim-records")
    assert_clean_success(obj, api, rcluster.ledger, mine)
    status = obj["status"]
    for s in status["stages"]:
        assert s.get("digest") != FORGED_DIGEST and not s["pod"].startswith("forged"), s
    assert status["image"]["digest"] != FORGED_DIGEST
    for p in api.pods():
        args = _pod_args(p)
        assert _args(args, "--cache-repo") == [f"{base}/cache/{victim}"], args
        assert all(a.startswith(f"{base}/stages/{victim}:") or a == f"{base}:latest"
                   for a in _args(args, "--push")), args
    # Nothing of the attacker's reached the victim's namespace.
    assert {p["metadata"]["labels"].get("stagefleet.io/imagebuild") for p in api.pods()} == {"app"}
    involved = {(e["involvedObject"]["kind"], e["involvedObject"]["name"]) for e in api.events()}
    assert all(name == "app" or name.startswith("app-") for _, name in involved), involved

    # --- the attacker's results ---------------------------------------------------------------------------
    # The forged pod is deleted (its owner is no ImageBuild of its namespace) and was never adopted.
    def forged_gone() -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            atk._retry(lambda: atk.core.read_namespaced_pod("forged", attacker))
        except ApiException as e:
            return e.status == 404
        return False

    poll(forged_gone, "the forged pod deleted", op, timeout=120, interval=0.2)
    # The one with a valid owner of its namespace ran and ended with its claim, and is ignored: the victim's
    # passes list pods in the victim's namespace only, the copycat's only pods with the copycat's uid.
    def claimed() -> bool:
        p = atk._retry(lambda: atk.core.read_namespaced_pod("forged-owned", attacker, _preload_content=False))
        cs = (json.loads(p.data).get("status") or {}).get("containerStatuses") or [{}]
        return FORGED_DIGEST in str(((cs[0].get("state") or {}).get("terminated") or {}).get("message"))

    poll(claimed, "forged-owned ended with its claim", op, timeout=120, interval=0.2)
    pod = json.loads(atk._retry(lambda: atk.core.read_namespaced_pod(
        "forged-owned", attacker, _preload_content=False)).data)
    assert pod["metadata"]["labels"]["stagefleet.io/imagebuild-uid"] == victim_uid
    atk._retry(lambda: atk.core.delete_namespaced_pod("forged-owned", attacker, grace_period_seconds=0))

    for name, (_, needles) in refused_by_policy.items():
        o = terminal(atk, name, op, timeout=120)
        st = o["status"]
        assert st["phase"] == "Failed" and st["failure"]["reason"] == "PolicyViolation", (name, st)
        stalled = _condition(o, "Stalled")
        assert stalled.get("status") == "True" and stalled.get("reason") == "PolicyViolation", (name, stalled)
        for needle in needles:
            assert needle in st["message"], (name, needle, st["message"])
        assert "source" not in st and "plan" not in st, (name, st)  # refused before anything was resolved
    assert "root:x:0:0" not in json.dumps(atk.ib("local-files"))
    warned = {e["involvedObject"]["name"] for e in atk.events()
              if e["reason"] == "PolicyViolation" and e["type"] == "Warning"}
    assert set(refused_by_policy) <= warned, warned
    created = rcluster.ledger.names(attacker)
    for name in [*refused_by_policy, "steal", *(f"hole-{i}" for i in range(HOLES))]:
        assert not [n for n in created if n.startswith(f"{name}-")], (name, created)

    def stalled_on_secret() -> dict[str, Any] | None:
        o = atk.ib("steal")
        c = _condition(o, "Stalled")
        return o if c.get("status") == "True" and c.get("reason") == "SecretNotFound" else None

    steal = poll(stalled_on_secret, "steal Stalled on its (missing) Secret", op, timeout=60)
    assert steal["status"]["phase"] == "Pending", steal["status"]
    assert 'Secret "canary"' in _condition(steal, "Stalled")["message"], steal["status"]

    # Same name and output image: built in its own namespace's repositories, never the victim's, and from
    # its own upstream results only (assert_clean_success: the digests its pods consumed are its workers').
    copy = terminal(atk, "app", op)
    poll(lambda: not [p for p in atk.pods() if p["metadata"]["name"].startswith("forged")],
         "the forged pods gone", op, timeout=120)
    theirs = _records_of(records, f"{base}/cache/{attacker}", tmp_path / "attacker-records")
    assert_clean_success(copy, atk, rcluster.ledger, theirs)
    for p in atk.pods():
        if p["metadata"]["labels"].get("stagefleet.io/imagebuild") != "app":
            continue
        args = _pod_args(p)
        assert _args(args, "--cache-repo") == [f"{base}/cache/{attacker}"], args
        assert all(a.startswith(f"{base}/stages/{attacker}:") or a == f"{base}:latest"
                   for a in _args(args, "--push")), args
        assert not [a for a in args if victim in a], args

    # The black-holed sources give up on their own deadline, naming the URL.
    for i in range(HOLES):
        o = terminal(atk, f"hole-{i}", op, timeout=SOURCE_TIMEOUT + 90)
        st = o["status"]
        assert st["phase"] == "Failed" and st["failure"]["reason"] == "SourceTimeout", (f"hole-{i}", st)
        assert st["message"].startswith(
            f"spec.source.git.url https://127.0.0.1:{hole.port}/org/repo-{i}.git: "
            f"no answer within {SOURCE_TIMEOUT}s"), st["message"]
        assert _condition(o, "Stalled").get("status") == "True", st

    assert operator_crashes(op.log) == []
