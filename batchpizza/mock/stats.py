"""What the mock has served: requests by status, the peak in flight, answers per question and
every arrival's time, so that tests and the benchmark can check what a client did to the server
(how many requests, how fast) rather than trust what the client says it did. The server owns
one `Stats` and its handlers count into it; ``GET /__stats`` returns the same snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    """What the server has served since start or the last reset()."""

    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    in_flight: int = 0
    peak_in_flight: int = 0
    answers: dict[str, int] = field(default_factory=dict, repr=False)
    timestamps: list[float] = field(default_factory=list, repr=False)

    def max_in_window(self, window: float = 1.0) -> int:
        """Most arrivals in any half-open window (t - window, t], as the rate limiter counts."""
        ts, best, lo = self.timestamps, 0, 0
        for hi, t in enumerate(ts):
            while ts[lo] <= t - window:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    def mean_rate(self) -> float:
        ts = self.timestamps
        if len(ts) < 2 or ts[-1] <= ts[0]:
            return 0.0
        return (len(ts) - 1) / (ts[-1] - ts[0])

    def to_dict(self, *, answers: bool = True) -> dict[str, Any]:
        snapshot: dict[str, Any] = {
            "requests": self.requests,
            # String keys so the in-process snapshot equals what /__stats returns.
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "answered": sum(self.answers.values()),
            "max_in_window_1s": self.max_in_window(),
            "mean_rate": self.mean_rate(),
        }
        if answers:
            snapshot["answers"] = dict(self.answers)
        return snapshot

    def reset(self) -> None:
        # Rebind rather than clear so a reader in another thread never sees a half-cleared dict;
        # in_flight is a gauge, so it survives and the peak restarts from it.
        self.requests = 0
        self.by_status = {}
        self.answers = {}
        self.timestamps = []
        self.peak_in_flight = self.in_flight

    def count_status(self, status: int) -> None:
        """One more reply with `status` (0: the connection was dropped or hung, no status)."""
        self.by_status[status] = self.by_status.get(status, 0) + 1
