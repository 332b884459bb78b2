"""Fault injection for reliability tests: error answers, watch drops and latency, all off by default."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Faults:
    error_rate: float = 0.0
    codes: tuple[int, ...] = (429, 500, 503)
    watch_drop_seconds: float | None = None
    latency_seconds: float = 0.0
    seed: int | None = None
    injected: int = 0  # counters, for tests to check that faults really happened
    watches_dropped: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.seed is not None:
            self._rng.seed(self.seed)

    def pick_error(self) -> int | None:
        """An HTTP code to fail this request with, or None."""
        if self.error_rate > 0 and self.codes and self._rng.random() < self.error_rate:
            self.injected += 1
            return self._rng.choice(list(self.codes))
        return None

    def update(self, changes: dict[str, Any]) -> None:
        known = {f.name for f in dataclasses.fields(self) if not f.name.startswith("_")}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        for k, v in changes.items():
            if k == "codes":
                v = tuple(int(c) for c in v)
            setattr(self, k, v)
        if "seed" in changes and self.seed is not None:
            self._rng.seed(self.seed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "error_rate": self.error_rate,
            "codes": list(self.codes),
            "watch_drop_seconds": self.watch_drop_seconds,
            "latency_seconds": self.latency_seconds,
            "seed": self.seed,
            "injected": self.injected,
            "watches_dropped": self.watches_dropped,
        }


REASONS = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}
