"""The Ready condition of every Node, kept by one list+watch in a thread (an informer's cache), for
`nodeloss` to tell lost pods: no API request per reconcile pass.

Only changes of a node's readiness (status or lastTransitionTime) or its appearance/removal are passed on
(``on_change(node name)``): heartbeat-only status updates, a node's labels or taints change nothing here.
Without permission to list Nodes (403; namespaced installs without the chart's node rule) the cache is None,
one log line says what that costs, and the list is tried again every few minutes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from stagefleet.controller.kube import Expired, Forbidden, Kube
from stagefleet.controller.nodeloss import NodeReadiness, node_readiness

log = logging.getLogger("stagefleet.operator")

FORBIDDEN_RETRY_SECONDS = 300.0
ERROR_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)


class NodeWatch:
    def __init__(
        self, kube: Kube, on_change: Callable[[str], None], *, lost_after: float, watch_timeout: int = 300
    ) -> None:
        self.kube = kube
        self.on_change = on_change
        self.lost_after = lost_after
        self.watch_timeout = watch_timeout
        self._nodes: dict[str, NodeReadiness] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.synced = threading.Event()  # the first list answered (with nodes, or 403)

    def snapshot(self) -> Mapping[str, NodeReadiness] | None:
        """The nodes' readiness as last seen; None while Nodes cannot be read. (Replaced whole on every
        change, never mutated: safe to read from any thread.)"""
        return self._nodes

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="stagefleet-nodes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _set(self, nodes: dict[str, NodeReadiness] | None, changed: list[str]) -> None:
        self._nodes = nodes
        for name in changed:
            try:
                self.on_change(name)
            except Exception:  # noqa: BLE001 - a failed trigger must not end the watch
                log.exception("node %s changed; triggering its builds failed", name)

    def run(self) -> None:
        forbidden_said = False
        errors = 0
        while not self._stop.is_set():
            try:
                items, rv = self.kube.list_nodes()
            except Forbidden as e:
                self._set(None, [])
                self.synced.set()
                if not forbidden_said:
                    log.warning(
                        "cannot list Nodes (%s): a pod on a lost node is noticed only once it is stuck "
                        "Terminating (its deletionTimestamp + %g s; a real control plane deletes such pods "
                        "after their NoExecute toleration, 300 s by default); grant get/list/watch on "
                        "nodes (chart: rbac.nodes) to notice a NotReady node after %g s",
                        e,
                        self.lost_after,
                        self.lost_after,
                    )
                    forbidden_said = True
                self._stop.wait(FORBIDDEN_RETRY_SECONDS)
                continue
            except Exception as e:  # noqa: BLE001 - the API is down or flaky: keep the last view, try again
                log.warning("listing Nodes failed (%s); trying again", e)
                self._stop.wait(ERROR_BACKOFF_SECONDS[min(errors, len(ERROR_BACKOFF_SECONDS) - 1)])
                errors += 1
                continue
            if forbidden_said:
                log.info("Nodes are readable: lost nodes are noticed after %g s NotReady", self.lost_after)
                forbidden_said = False
            old = self._nodes or {}
            new = dict(node_readiness(n) for n in items)
            self._set(new, sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n)))
            self.synced.set()
            errors = 0
            self._watch(rv)

    def _watch(self, rv: str) -> None:
        """Follow the watch from ``rv`` until it expires or fails (then the caller lists again)."""
        while not self._stop.is_set():
            try:
                for etype, obj in self.kube.watch_nodes(rv, self.watch_timeout):
                    if self._stop.is_set():
                        return
                    rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                    if etype == "BOOKMARK":
                        continue
                    name, readiness = node_readiness(obj)
                    nodes = self._nodes or {}
                    if etype == "DELETED":
                        if name in nodes:
                            self._set({k: v for k, v in nodes.items() if k != name}, [name])
                    elif nodes.get(name) != readiness:
                        self._set({**nodes, name: readiness}, [name])
            except Expired:
                return
            except Exception as e:  # noqa: BLE001 - dropped connection, timeout, a broken line: list again
                log.debug("node watch ended (%s); listing again", e)
                self._stop.wait(0.5)
                return
