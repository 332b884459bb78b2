"""Pure: Kubernetes' RFC 3339 timestamps (``2026-01-01T00:00:00Z``) to and from aware datetimes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def fmt_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: Any) -> datetime | None:
    """None for anything that is not such a timestamp (a status field may hold anything)."""
    if not isinstance(s, str) or not s:
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None
