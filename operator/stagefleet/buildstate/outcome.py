"""How the build stands, from its groups' phases: failed (the first group that failed, in plan order),
succeeded (every group, not only the final one: a final worker started early can finish before its
upstreams' results are recorded), or still building."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from stagefleet.buildstate.phases import ACTIVE, DONE, FAILED, RETRYING, SUCCEEDED, WAITING

#: The build's own phases (the ImageBuild's status.phase; local mode's result).
BUILDING, SUCCEEDED_BUILD, FAILED_BUILD = "Building", "Succeeded", "Failed"


@dataclass(frozen=True)
class Outcome:
    phase: str                      # BUILDING, SUCCEEDED_BUILD or FAILED_BUILD
    failed_group: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.phase == SUCCEEDED_BUILD


def outcome(groups: Sequence[str], phases: Mapping[str, str]) -> Outcome:
    """The build's outcome; ``groups`` in plan order."""
    for gid in groups:
        if phases.get(gid) == FAILED:
            return Outcome(FAILED_BUILD, gid)
    if all(phases.get(gid) == SUCCEEDED for gid in groups):
        return Outcome(SUCCEEDED_BUILD)
    return Outcome(BUILDING)


def cancelled_by_failure(phases: Mapping[str, str]) -> list[str]:
    """The groups a failed build stops: whatever still runs or waits to run (done groups keep theirs)."""
    return [gid for gid, phase in phases.items() if phase in (*ACTIVE, WAITING, RETRYING)]


def unfinished(phases: Mapping[str, str]) -> list[str]:
    """Groups not done: cancelled when the build times out."""
    return [gid for gid, phase in phases.items() if phase not in DONE]
