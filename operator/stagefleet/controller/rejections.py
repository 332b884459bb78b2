"""Pure: worker pods the API refused to create. The group waits (no attempt used) and is tried again
after a growing delay; an exhausted ResourceQuota is a wait, never an error."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from stagefleet.controller import fields
from stagefleet.controller.clock import fmt_time

REJECTION_BACKOFF_CAP = 30.0
QUOTA_BACKOFF_CAP = 5.0


def rejection_backoff(rejections: int, base: float, *, quota: bool = False) -> float:
    """Delay before creating a refused pod again: base, 2·base, 4·base … capped at 30 s (whatever refused
    it — a missing ServiceAccount, a webhook — can be fixed at any time, and nothing runs); at 5 s for an
    exhausted quota, which frees itself as soon as any pod of the namespace ends."""
    cap = QUOTA_BACKOFF_CAP if quota else REJECTION_BACKOFF_CAP
    return float(min(base * (2 ** max(0, rejections - 1)), cap))


def quota_exhausted(message: str | None) -> bool:
    """Whether a refusal (`rejection_text`) is a ResourceQuota's "exceeded quota", i.e. a wait, not an error.

    Only the quota admission plugin says "exceeded quota:"; its "failed quota: …: must specify limits" is a
    pod spec the quota can never admit, and stays an error.
    """
    return bool(message) and "(403 Forbidden)" in str(message) and "exceeded quota: " in str(message)


def rejection_text(kind: str, name: str, code: int, reason: str, message: str) -> str:
    """A refused create as a stage message: the object, the HTTP code and reason, the API's own words."""
    what = f"pod {name}" if kind == "Pod" else f"{kind} {name}"
    return f"{what} refused by the API ({code} {reason}): {message}"


def note_rejections(
    status: Mapping[str, Any], rejected: Mapping[str, str], now: datetime, backoff_base: float
) -> dict[str, Any]:
    """``status`` (a pass's input to `decide`) with the groups whose pod creation the API refused marked.

    ``rejected``: group id → `rejection_text`. Such a group stays as it was (Waiting, or Retrying after a
    failed attempt): no pod exists, no attempt is used. Its entries get the refusal as message, the count
    of consecutive refusals (``rejections``) and ``retryAt`` after `rejection_backoff`. `decide` on the
    result keeps the group waiting until then and the build Stalled (reason PodRejected); a pod created
    for it later clears the mark.
    """
    stages: list[Any] = []
    for e in status.get("stages") or ():
        if isinstance(e, Mapping) and str(e.get("group")) in rejected:
            count = (fields.integer(e.get("rejections")) or 0) + 1
            text = rejected[str(e.get("group"))]
            delay = rejection_backoff(count, backoff_base, quota=quota_exhausted(text))
            retry_at = now + timedelta(seconds=delay)
            e = {
                **e,
                "message": text,
                "rejections": count,
                "retryAt": fmt_time(retry_at),
            }
        stages.append(e)
    return {**status, "stages": stages}
