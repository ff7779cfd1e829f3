"""The in-flight window: records between poll and commit, per input partition, in the order they were polled.

    admit(record)          -> the partition's generation; the record is in flight
    finish(record, gen, m) -> its encoded outcome is known (ignored if the generation is stale)
    ready()                -> the outcomes of each partition's contiguous finished prefix, in offset order, once:
                              the caller produces them into the open transaction
    frontier()             -> per partition, the position after the last record handed out by ready(): what the
                              transaction commits
    committed()            -> the transaction committed: the frontier is the new rewind point
    rewind_points()        -> per partition, the first offset not committed
    restart()              -> the transaction was aborted (or the model failed): forget everything not committed,
                              bump the generations, and return where to seek each partition back to
    drop(partitions)       -> revoked or lost: forget those partitions

A partition's rewind point starts at the first offset admitted for it, which is where the consumer started
reading (the group's committed offset, or a seek).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field

from bridge.records import OutputMessage, Record

PartitionKey = tuple[str, int]


@dataclass
class _Slot:
    offset: int
    size: int
    message: OutputMessage | None = None  # None while in flight


@dataclass
class _Partition:
    rewind: int  # the first offset not committed: where an abort seeks back to
    frontier: int  # the position after the last record handed out by ready()
    generation: int = 0
    slots: deque[_Slot] = field(default_factory=deque)
    index: dict[int, _Slot] = field(default_factory=dict)


class InFlightWindow:
    """Bounded by records and by the bytes of their values; not thread-safe (the run loop's thread owns it)."""

    def __init__(self, max_records: int, max_bytes: int) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._partitions: dict[PartitionKey, _Partition] = {}
        self._generations: dict[PartitionKey, int] = {}  # survives drop(), so stale work stays stale
        self.records = 0
        self.bytes = 0

    def full(self) -> bool:
        return self.records >= self.max_records or self.bytes >= self.max_bytes

    def admit(self, record: Record) -> int:
        """Put a polled record in flight; returns the generation its outcome must carry."""
        key = (record.topic, record.partition)
        part = self._partitions.get(key)
        if part is None:
            part = self._partitions[key] = _Partition(record.offset, record.offset,
                                                      self._generations.get(key, 0))
        slot = _Slot(record.offset, len(record.value or b""))
        part.slots.append(slot)
        part.index[record.offset] = slot
        self.records += 1
        self.bytes += slot.size
        return part.generation

    def finish(self, record: Record, generation: int, message: OutputMessage) -> bool:
        """Record the outcome of an admitted record; False (and nothing changes) if its work is stale."""
        part = self._partitions.get((record.topic, record.partition))
        if part is None or part.generation != generation:
            return False
        slot = part.index.get(record.offset)
        if slot is None or slot.message is not None:
            return False
        slot.message = message
        return True

    def ready(self) -> list[OutputMessage]:
        """Each partition's newly contiguous finished outcomes, in offset order; they leave the window."""
        out: list[OutputMessage] = []
        for part in self._partitions.values():
            while part.slots and part.slots[0].message is not None:
                slot = part.slots.popleft()
                del part.index[slot.offset]
                out.append(slot.message)  # type: ignore[arg-type]
                part.frontier = slot.offset + 1
                self.records -= 1
                self.bytes -= slot.size
        return out

    def frontier(self) -> dict[PartitionKey, int]:
        """The positions to commit: per partition with outcomes handed out since the last commit."""
        return {key: part.frontier for key, part in self._partitions.items() if part.frontier > part.rewind}

    def rewind_points(self) -> dict[PartitionKey, int]:
        """Per partition in the window, the first offset not committed."""
        return {key: part.rewind for key, part in self._partitions.items()}

    def committed(self) -> None:
        for part in self._partitions.values():
            part.rewind = part.frontier

    def restart(self) -> dict[PartitionKey, int]:
        """Forget everything not committed; returns the offset to seek each partition back to."""
        rewind = {key: part.rewind for key, part in self._partitions.items()}
        for key in list(self._partitions):
            self._forget(key)
        return rewind

    def drop(self, partitions: Collection[PartitionKey]) -> None:
        """Forget these partitions (revoked or lost); their outcomes still in flight will be stale."""
        for key in partitions:
            if key in self._partitions:
                self._forget(key)

    def _forget(self, key: PartitionKey) -> None:
        part = self._partitions.pop(key)
        self._generations[key] = part.generation + 1
        self.records -= len(part.slots)
        self.bytes -= sum(slot.size for slot in part.slots)
