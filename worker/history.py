"""The patient's imaging history: final results and completed orders, by patient and side.

`History` is the interface; `InMemoryHistory` serves the CLI and the embedded mode, and
`worker.store.RedisHistory` the pipeline. Keys are "assigning authority|identifier" strings of
PID-3; an entry is recorded under every identifier of the patient and found by any of them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol

from worker.models import HistoryEntry, Laterality


class History(Protocol):
    def add(self, patient_keys: list[str], entry: HistoryEntry) -> None:
        """Record a study for the patient known by any of *patient_keys*."""

    def entries(self, patient_keys: list[str]) -> list[HistoryEntry]:
        """Every study recorded under any of *patient_keys* (no duplicates)."""


class InMemoryHistory:
    """History kept in a dict: lost when the process ends."""

    def __init__(self, max_entries_per_patient: int = 200) -> None:
        self._data: dict[str, list[HistoryEntry]] = defaultdict(list)
        self._max = max_entries_per_patient

    def add(self, patient_keys: list[str], entry: HistoryEntry) -> None:
        for key in patient_keys:
            bucket = self._data[key]
            if entry not in bucket:
                bucket.append(entry)
                del bucket[:-self._max]

    def entries(self, patient_keys: list[str]) -> list[HistoryEntry]:
        out: list[HistoryEntry] = []
        for key in patient_keys:
            for entry in self._data.get(key, ()):
                if entry not in out:
                    out.append(entry)
        return out

    def clear(self) -> None:
        self._data.clear()


def same_side(a: Laterality, b: Laterality) -> bool:
    """Whether two studies may concern the same thigh (unknown sides are given the benefit)."""
    return a == "unknown" or b == "unknown" or a == b or "bilateral" in (a, b)
