"""The patient's imaging history: final results and completed orders, by patient and side.

`History` is the interface; `InMemoryHistory` serves the CLI and the embedded mode, and
`worker.store.RedisHistory` the pipeline. Keys are "assigning authority|identifier" strings of
PID-3; an entry is recorded under every identifier of the patient and found by any of them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from worker.models import HistoryEntry, Laterality


class History(Protocol):
    def add(self, patient_keys: list[str], entry: HistoryEntry) -> None:
        """Record a study for the patient known by any of *patient_keys*."""

    def entries(self, patient_keys: list[str]) -> list[HistoryEntry]:
        """Every study recorded under any of *patient_keys* (no duplicates)."""


class InMemoryHistory:
    """History kept in a dict: lost when the process ends.

    Bounded for long runs (a replay of a day of messages): at most *max_entries_per_patient*
    studies per key and *max_patients* keys, the least recently used key forgotten first.
    """

    def __init__(self, max_entries_per_patient: int = 200, max_patients: int = 500_000) -> None:
        self._data: OrderedDict[str, list[HistoryEntry]] = OrderedDict()
        self._max = max_entries_per_patient
        self._max_patients = max_patients

    def add(self, patient_keys: list[str], entry: HistoryEntry) -> None:
        for key in patient_keys:
            bucket = self._data.get(key)
            if bucket is None:
                bucket = self._data[key] = []
                if len(self._data) > self._max_patients:
                    self._data.popitem(last=False)
            else:
                self._data.move_to_end(key)
            if entry not in bucket:
                bucket.append(entry)
                del bucket[: -self._max]

    def entries(self, patient_keys: list[str]) -> list[HistoryEntry]:
        out: list[HistoryEntry] = []
        for key in patient_keys:
            bucket = self._data.get(key)
            if bucket is None:
                continue
            self._data.move_to_end(key)
            for entry in bucket:
                if entry not in out:
                    out.append(entry)
        return out

    def __len__(self) -> int:
        """The number of patient keys held."""
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()


def same_side(a: Laterality, b: Laterality) -> bool:
    """Whether two studies may concern the same thigh (unknown sides are given the benefit)."""
    return a == "unknown" or b == "unknown" or a == b or "bilateral" in (a, b)
