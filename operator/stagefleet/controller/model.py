"""The plan as the operator keeps it: recorded in ``status.plan`` so a restarted operator (or a later
reconcile) continues from status without re-fetching the source, and decoupled from ``stagefleet.plan``'s
classes so that status written by one operator version is read by the next.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stagefleet.plan import Plan
    from stagefleet.stages import StageGraph

# A plan of more groups than this is stored in status with its groups gzip-compressed (``groupsCompressed``,
# base64): a 2,000-stage Dockerfile's plan is ~360 KB of JSON, a quarter of the API's object size limit.
PLAN_INLINE_GROUPS = 256


def plan_groups(d: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The groups of a plan as stored in status, listed or compressed."""
    blob = d.get("groupsCompressed")
    if isinstance(blob, str):
        groups = json.loads(gzip.decompress(base64.b64decode(blob)))
        return list(groups) if isinstance(groups, list) else []
    return list(d.get("groups") or ())


@dataclass(frozen=True)
class GroupPlan:
    """One worker pod's share of the build: a chain of stages built with ``--target stages[-1]``."""

    id: str
    stages: tuple[str, ...]
    after: tuple[str, ...]
    consumes: tuple[tuple[str, str], ...]  # (upstream stage, producing group id)
    secrets: tuple[str, ...]
    ssh: tuple[str, ...]
    wave: int = 0
    critical: bool = False
    weight: int = 0

    @property
    def target(self) -> str:
        return self.stages[-1]

    def to_status(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "stages": list(self.stages),
            "after": list(self.after),
            "consumes": [{"stage": s, "group": g} for s, g in self.consumes],
            "secrets": list(self.secrets),
            "ssh": list(self.ssh),
            "wave": self.wave,
            "critical": self.critical,
            "weight": self.weight,
        }

    @classmethod
    def from_status(cls, d: Mapping[str, Any]) -> GroupPlan:
        return cls(
            id=str(d["id"]),
            stages=tuple(d["stages"]),
            after=tuple(d.get("after") or ()),
            consumes=tuple((str(c["stage"]), str(c["group"])) for c in d.get("consumes") or ()),
            secrets=tuple(d.get("secrets") or ()),
            ssh=tuple(d.get("ssh") or ()),
            wave=int(d.get("wave", 0)),
            critical=bool(d.get("critical", False)),
            weight=int(d.get("weight", 0)),
        )


@dataclass(frozen=True)
class PlanView:
    target: str
    groups: tuple[GroupPlan, ...]
    critical_path: tuple[str, ...]
    final_group: str
    skipped: tuple[str, ...] = ()
    # The parsed stages, as planned (not in status): what the stages' content keys are computed from, once,
    # when the generation is planned (`controller.reuse`).
    graph: StageGraph | None = field(default=None, compare=False, repr=False)

    @property
    def stages(self) -> tuple[str, ...]:
        """Every stage built, in group order."""
        return tuple(s for g in self.groups for s in g.stages)

    def group(self, gid: str) -> GroupPlan:
        for g in self.groups:
            if g.id == gid:
                return g
        raise KeyError(gid)

    def to_status(self) -> dict[str, Any]:
        groups = [g.to_status() for g in self.groups]
        listed: dict[str, Any] = {"groups": groups}
        if len(groups) > PLAN_INLINE_GROUPS:
            text = json.dumps(groups, separators=(",", ":")).encode()
            listed = {  # (mtime 0: the same plan compresses to the same text, so no status write)
                "groupsTotal": len(groups),
                "groupsCompressed": base64.b64encode(gzip.compress(text, mtime=0)).decode(),
            }
        return {
            "target": self.target,
            **listed,
            "waves": 1 + max((g.wave for g in self.groups), default=-1),
            "criticalPath": list(self.critical_path),
            "finalGroup": self.final_group,
            "skipped": list(self.skipped),
        }

    @classmethod
    def from_status(cls, d: Mapping[str, Any]) -> PlanView:
        return cls(
            target=str(d["target"]),
            groups=tuple(GroupPlan.from_status(g) for g in plan_groups(d)),
            critical_path=tuple(d.get("criticalPath") or ()),
            final_group=str(d["finalGroup"]),
            skipped=tuple(d.get("skipped") or ()),
        )


def plan_view(plan: Plan) -> PlanView:
    """Convert a ``stagefleet.plan.Plan`` (the planner's output) to the operator's view."""
    groups: Sequence[Any] = plan.groups
    return PlanView(
        target=plan.graph.target,
        groups=tuple(
            GroupPlan(
                id=g.id,
                stages=tuple(g.stages),
                after=tuple(g.after),
                consumes=tuple((str(a), str(b)) for a, b in g.consumes),
                secrets=tuple(g.secrets),
                ssh=tuple(g.ssh),
                wave=int(g.wave),
                critical=bool(g.critical),
                weight=int(g.weight),
            )
            for g in groups
        ),
        critical_path=tuple(plan.critical_path),
        final_group=plan.final_group,
        skipped=tuple(plan.graph.skipped),
        graph=plan.graph,
    )


def plan_dockerfile(
    text: str, *, target: str | None, build_args: Mapping[str, str], filename: str = "Dockerfile"
) -> PlanView:
    """Dockerfile text → the operator's plan; raises ``stagefleet.stages.DockerfileError``."""
    from stagefleet.plan import make_plan
    from stagefleet.stages import parse_stage_graph

    graph = parse_stage_graph(text, filename=filename, target=target, build_args=build_args)
    return plan_view(make_plan(graph))


@dataclass(frozen=True)
class Event:
    """An Event a pass posts about the ImageBuild (`kube` correlates repeats)."""

    type: str  # Normal or Warning
    reason: str
    message: str
