"""Pure: which run of an ImageBuild the operator builds, and when a new one starts.

A spec edit (a new ``metadata.generation``) starts a new run; so does a new value of the
``stagefleet.io/rebuild`` annotation (``kubectl annotate ib/app stagefleet.io/rebuild=$(date +%s)
--overwrite``), which re-runs a build without editing its spec: after an infrastructure failure, or to
pick up a moved base image tag or branch. The model is Flux's ``reconcile.fluxcd.io/requestedAt`` and
``status.lastHandledReconcileAt``: the status records the value it answered (``status.rebuild``), and
only a different value starts a run; removing the annotation starts none.

Runs are numbered (``status.run``): the first is the generation, each later one is one more than the
last and never below the generation, so a number names one run for the ImageBuild's whole life. Pod
names, their generation label and stage result tags carry the run number (a rebuild's pods never meet
the previous run's names); ``status.observedGeneration`` stays ``metadata.generation``, as kstatus,
Argo CD and Flux read it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ANNOTATION_REBUILD = "stagefleet.io/rebuild"


@dataclass(frozen=True)
class Run:
    """One run: its number, the generation it builds, the rebuild request it answers and the hash of its
    spec without ``suspend`` (`spec_hash`)."""

    number: int
    generation: int
    rebuild: str | None = None
    spec_hash: str | None = None

    def fields(self) -> dict[str, Any]:
        """The status fields that say which run the status describes."""
        out: dict[str, Any] = {"observedGeneration": self.generation, "run": self.number}
        if self.rebuild is not None:
            out["rebuild"] = self.rebuild
        if self.spec_hash is not None:
            out["specHash"] = self.spec_hash
        return out


# Spec fields that say when a run's pods start, not what it builds: an edit of only these keeps the run.
SCHEDULING_FIELDS = frozenset({"suspend", "priority"})


def spec_hash(spec: Any) -> str | None:
    """What a run builds from: the spec without ``suspend`` and ``priority`` (pausing and resuming, or
    moving a waiting build up its namespace's queue, is not a new build, as a Job's spec.suspend is not a new
    Job). None for a spec that is not an object."""
    if not isinstance(spec, Mapping):
        return None
    kept = {k: v for k, v in spec.items() if k not in SCHEDULING_FIELDS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stamp(status: Mapping[str, Any], run: Run) -> dict[str, Any]:
    """``status`` as describing ``run``: its fields, and its conditions' observedGeneration (a spec edit
    that keeps the run, e.g. spec.suspend, is observed without a new run)."""
    out = {**status, **run.fields()}
    conditions = status.get("conditions")
    if isinstance(conditions, list):
        out["conditions"] = [
            {**c, "observedGeneration": run.generation} if isinstance(c, Mapping) else c for c in conditions
        ]
    return out


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def run_of(status: Mapping[str, Any]) -> int | None:
    """The run a status describes (a status written before runs existed: its generation)."""
    return _int(status.get("run")) or _int(status.get("observedGeneration"))


def requested(meta: Mapping[str, Any]) -> str | None:
    """The rebuild the ImageBuild's annotation asks for (None: none)."""
    value = (meta.get("annotations") or {}).get(ANNOTATION_REBUILD)
    return value if isinstance(value, str) else None


def unanswered(meta: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """A spec edit the status has not observed, or a rebuild request it has not answered: a pass is due."""
    generation = _int(meta.get("generation")) or 1
    if _int(status.get("observedGeneration")) != generation or run_of(status) is None:
        return True
    asked = requested(meta)
    return asked is not None and asked != status.get("rebuild")


def current(meta: Mapping[str, Any], status: Mapping[str, Any], spec: Any = None) -> Run:
    """The run to build now: the status's own, or the next one after a spec edit (other than ``suspend``:
    `spec_hash`) or a new rebuild request."""
    generation = _int(meta.get("generation")) or 1
    last = run_of(status)
    digest = spec_hash(spec) if spec is not None else None
    recorded = status.get("specHash")
    same_spec = _int(status.get("observedGeneration")) == generation or (
        digest is not None and recorded == digest
    )
    asked = requested(meta)
    kept = status.get("rebuild")
    kept = kept if isinstance(kept, str) else None
    if last is not None and same_spec and (asked is None or asked == kept):
        return Run(last, generation, kept, digest or (recorded if isinstance(recorded, str) else None))
    number = generation if last is None else max(generation, last + 1)
    return Run(number, generation, asked, digest)


def following(status: Mapping[str, Any], run: Run) -> Run:
    """The run after ``run`` for the same spec (its git revision moved: `polling`)."""
    last = run_of(status) or run.number
    return Run(max(run.generation, last + 1), run.generation, run.rebuild, run.spec_hash)


def started_by(status: Mapping[str, Any], run: Run) -> str | None:
    """Why ``run`` replaces the run ``status`` describes, for its event: None when it does not (the same run,
    or the ImageBuild's first) or for another reason than a spec edit or a rebuild request."""
    last = run_of(status)
    if last is None or last == run.number:
        return None
    if _int(status.get("observedGeneration")) != run.generation:
        return f"spec changed (generation {run.generation})"
    if run.rebuild is not None and run.rebuild != status.get("rebuild"):
        return f"rebuild requested ({ANNOTATION_REBUILD}={run.rebuild!r})"
    return None  # (a moved git revision: `polling`, whose caller says so)
