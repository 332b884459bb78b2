"""Secret values out of everything local mode prints."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path


class Masker:
    """Replaces secret values in text before anything is printed — defence in depth on top of the
    worker's own scrubbing, so a `RUN cat /run/secrets/x` never reaches the terminal or a CI log."""

    MASK = "****"

    def __init__(self, values: Iterable[str]) -> None:
        needles: set[str] = set()
        for v in values:
            if v.strip():
                needles.add(v.strip())
            needles.update(line.strip() for line in v.splitlines() if len(line.strip()) >= 4)
        self._needles = sorted(needles, key=len, reverse=True)

    @classmethod
    def from_files(cls, files: Iterable[str | Path]) -> Masker:
        values = []
        for f in files:
            with contextlib.suppress(OSError):
                values.append(Path(f).read_text(errors="replace"))
        return cls(values)

    def __call__(self, text: str) -> str:
        for n in self._needles:
            if n in text:
                text = text.replace(n, self.MASK)
        return text
