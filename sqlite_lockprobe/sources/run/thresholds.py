"""What `lockprobe check` requires of a run: the limits, from a scenario's `[check]` table and
from the command line (which overrides the table, option by option)."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Thresholds:
    """Limits on one run; None means "not checked". `expect` is the exact set of pattern ids
    the findings must have (() = healthy); `forbid` lists pattern ids that must not appear."""

    max_busy_errors: int | None = None
    max_p99_wait_ms: float | None = None
    forbid: tuple[str, ...] | None = None
    expect: tuple[str, ...] | None = None

    def overridden_by(self, other: Thresholds) -> Thresholds:
        """These limits with every limit that `other` sets replacing ours."""
        values = {
            f.name: getattr(other, f.name)
            if getattr(other, f.name) is not None
            else getattr(self, f.name)
            for f in fields(self)
        }
        return Thresholds(**values)

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    def to_json(self) -> dict[str, object]:
        return {
            "max_busy_errors": self.max_busy_errors,
            "max_p99_wait_ms": self.max_p99_wait_ms,
            "forbid": None if self.forbid is None else list(self.forbid),
            "expect": None if self.expect is None else list(self.expect),
        }
