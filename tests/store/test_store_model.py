"""A stateful model test: random appends, flushes and power losses against a simple model.

After every crash, everything acknowledged is present byte for byte at its queue offset, and
nothing that was never appended is.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from homing.clock import FakeClock
from homing.store import MessageStore, NewRecord, SimulatedDisk, StoreConfig

QUEUES = [("a", 0), ("a", 1), ("b", 0)]


class StoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.disk: SimulatedDisk | None = None
        self.store: MessageStore | None = None
        self.config = StoreConfig(
            data_dir="/data",
            segment_size_bytes=8 * 1024,
            consume_queue_entries_per_file=8,
            index_buffer_entries=6,
            checkpoint_interval_s=0.001,
        )
        # Per queue: (message id, body) by queue offset; what the store may hold.
        self.appended: dict[tuple[str, int], list[tuple[str, bytes]]] = {key: [] for key in QUEUES}
        self.acknowledged: dict[tuple[str, int], int] = {key: 0 for key in QUEUES}  # a prefix length
        self.counter = 0

    @rule(seed=st.integers(0, 2**16))
    @precondition(lambda self: self.store is None)
    def start(self, seed: int) -> None:
        self.disk = SimulatedDisk(seed=seed)
        self.store = MessageStore(self.config, self.disk, FakeClock())
        self.store.open()

    @rule(
        queue=st.sampled_from(QUEUES),
        sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=4),
        wait=st.booleans(),
    )
    @precondition(lambda self: self.store is not None)
    def append(self, queue: tuple[str, int], sizes: list[int], wait: bool) -> None:
        assert self.store is not None
        records = []
        for size in sizes:
            self.counter += 1
            body = bytes([self.counter % 251]) * size
            records.append(NewRecord(queue[0], queue[1], body, message_id=f"m{self.counter}", keys=("k",)))
        result = self.store.append(records)
        self.appended[queue].extend((record.message_id, record.body) for record in records)
        assert [item.queue_offset for item in result.records] == list(
            range(len(self.appended[queue]) - len(records), len(self.appended[queue]))
        )
        if wait:
            self.store.wait_durable(result.end_offset)
            for key in QUEUES:
                self.acknowledged[key] = len(self.appended[key])

    @rule(torn=st.booleans())
    @precondition(lambda self: self.store is not None)
    def power_loss(self, torn: bool) -> None:
        assert self.store is not None and self.disk is not None
        self.store.halt()
        self.disk.crash(torn=torn)
        self._reopen_and_check()

    @rule()
    @precondition(lambda self: self.store is not None)
    def clean_restart(self) -> None:
        assert self.store is not None
        self.store.close()
        for key in QUEUES:
            self.acknowledged[key] = len(self.appended[key])  # a clean close flushes everything
        self._reopen_and_check()

    def _reopen_and_check(self) -> None:
        assert self.disk is not None
        self.store = MessageStore(self.config, self.disk, FakeClock())
        self.store.open()
        for key in QUEUES:
            present = self._read(key)
            acknowledged = self.acknowledged[key]
            assert len(present) >= acknowledged, f"{key}: acknowledged records lost"
            assert present == self.appended[key][: len(present)], f"{key}: unexpected or altered records"
            # What did not survive was never acknowledged; forget it so offsets line up again.
            self.appended[key] = present
            self.acknowledged[key] = len(present)

    def _read(self, key: tuple[str, int]) -> list[tuple[str, bytes]]:
        assert self.store is not None
        self.store.dispatch_now()
        found: list[tuple[str, bytes]] = []
        offset, end = self.store.queue_bounds(*key)
        while offset < end:
            read = self.store.read_queue(key[0], key[1], offset, 50)
            assert [record.queue_offset for record in read.records] == list(
                range(offset, offset + len(read.records))
            )
            found.extend((record.message_id, record.body) for record in read.records)
            offset = read.next_queue_offset
        return found

    @invariant()
    def acknowledged_records_are_readable(self) -> None:
        if self.store is None:
            return
        for key in QUEUES:
            present = self._read(key)
            assert present[: self.acknowledged[key]] == self.appended[key][: self.acknowledged[key]]

    def teardown(self) -> None:
        if self.store is not None:
            self.store.halt()


StoreModel.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_store_against_model = StoreModel.TestCase
