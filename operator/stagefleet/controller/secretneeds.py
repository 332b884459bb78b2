"""Pure: the Secret keys a build's pods will mount, and what is wrong with them before any pod is made."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from stagefleet.controller.model import PlanView
from stagefleet.controller.spec import ImageBuildSpec


@dataclass(frozen=True)
class SecretNeed:
    """A Secret key the build's pods will mount, and the spec field that asks for it."""

    name: str
    key: str
    path: str


def secret_needs(spec: ImageBuildSpec, plan: PlanView) -> list[SecretNeed]:
    """Only what this plan's pods mount: a declared build secret no stage uses is not required."""
    ids = {s for g in plan.groups for s in g.secrets}
    ssh_ids = {s for g in plan.groups for s in g.ssh}
    needs: list[SecretNeed] = []
    if spec.output.push_secret:
        needs.append(SecretNeed(spec.output.push_secret, ".dockerconfigjson", "spec.output.pushSecretRef"))
    if spec.source.git and spec.source.git.secret:
        ref = spec.source.git.secret
        needs.append(SecretNeed(ref.name, ref.key, "spec.source.git.secretRef"))
    needs += [SecretNeed(s.secret.name, s.secret.key, s.path) for s in spec.secrets if s.id in ids]
    needs += [SecretNeed(s.secret.name, s.secret.key, s.path) for s in spec.ssh if s.id in ssh_ids]
    return needs


def secret_problems(needs: Sequence[SecretNeed], keys: Mapping[str, set[str] | None]) -> dict[str, str]:
    """Problem text per Secret name: missing Secret, or a key it lacks (the kubelet would fail the mount)."""
    problems: dict[str, list[str]] = {}
    for n in needs:
        have = keys.get(n.name)
        if have is None:
            problems.setdefault(n.name, []).append(
                f'Secret "{n.name}" ({n.path}): not found in the namespace'
            )
        elif n.key not in have:
            problems.setdefault(n.name, []).append(f'Secret "{n.name}" has no key "{n.key}" ({n.path}.key)')
    return {name: "; ".join(dict.fromkeys(texts)) for name, texts in problems.items()}
