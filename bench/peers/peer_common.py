"""What every cell of ``bench/peers.py`` shares: the recorder, percentiles, process accounting.

A *cell* is one (system, client, mode) measurement, run in a child process of its own. The child
connects, prepares (a consume cell fills its backlog), then measures a window: completions (a
message acknowledged by the broker, or a consumed message acked) are counted only when they fall
inside the window, so messages in flight when it opens or closes do not distort the rate. The
child tells the driver when the window opens and closes (``S`` and ``E`` lines on stdout) so that
the driver can read the server's CPU time around exactly that span.
"""

from __future__ import annotations

import array
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BODY_BYTES = 1024
# One random body for every message of every system: generating bodies is not what is measured.
BODY = os.urandom(BODY_BYTES)

MODES = ("single", "concurrent16", "pipelined", "consume")
CONCURRENT_PRODUCERS = 16

# Lines of the child-to-driver protocol (stdout of a cell process).
START_LINE = "@@S"
END_LINE = "@@E"
RESULT_PREFIX = "@@R "

Row = dict[str, object]


def now_ns() -> int:
    return time.perf_counter_ns()


def progress(message: str) -> None:
    print(f"[peers] {message}", file=sys.stderr, flush=True)


def percentile_ms(sorted_ns: Sequence[int], fraction: float) -> float | None:
    if not sorted_ns:
        return None
    index = min(len(sorted_ns) - 1, int(fraction * len(sorted_ns)))
    return round(sorted_ns[index] / 1e6, 3)


@dataclass(slots=True)
class CellSpec:
    """What a cell process is asked to do (passed to it as JSON)."""

    system: str
    client: str
    mode: str
    endpoint: str  # host:port of the server
    warmup_s: float
    duration_s: float
    fill_s: float  # consume: longest time spent filling the backlog
    fill_max: int  # consume: most messages put in the backlog
    tag: str  # unique per cell: queue, stream, topic and group names derive from it
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "system": self.system,
                "client": self.client,
                "mode": self.mode,
                "endpoint": self.endpoint,
                "warmup_s": self.warmup_s,
                "duration_s": self.duration_s,
                "fill_s": self.fill_s,
                "fill_max": self.fill_max,
                "tag": self.tag,
                "extra": self.extra,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> CellSpec:
        raw = json.loads(text)
        return cls(
            system=str(raw["system"]),
            client=str(raw["client"]),
            mode=str(raw["mode"]),
            endpoint=str(raw["endpoint"]),
            warmup_s=float(raw["warmup_s"]),
            duration_s=float(raw["duration_s"]),
            fill_s=float(raw["fill_s"]),
            fill_max=int(raw["fill_max"]),
            tag=str(raw["tag"]),
            extra={str(key): str(value) for key, value in dict(raw["extra"]).items()},
        )

    @property
    def host(self) -> str:
        return self.endpoint.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])


class Recorder:
    """Counts completions inside the measurement window and keeps their latencies.

    ``start_ns`` / ``end_ns`` bound the window (``perf_counter_ns``). ``done(sent_ns, count)``
    records ``count`` messages completed now, sent at ``sent_ns`` (pass ``None`` where a latency
    means nothing, e.g. a consumed message). ``finish()`` closes the window early (a drained
    backlog); it is also what emits the ``E`` line, once.
    """

    def __init__(self, start_ns: int, end_ns: int, on_finish: Callable[[], None] | None = None) -> None:
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.count = 0
        self.latencies = array.array("q")
        self.last_ns = start_ns
        self.finished = False
        self._on_finish = on_finish
        self._cpu_start = 0.0
        self._cpu_end: float | None = None

    def opened(self) -> None:
        """The window opens now: note the client's own CPU time and tell the driver (``S``)."""
        self._cpu_start = time.process_time()
        emit_line(START_LINE)

    def done(self, sent_ns: int | None, count: int = 1) -> None:
        now = time.perf_counter_ns()
        if now < self.start_ns or now >= self.end_ns:
            return
        self.count += count
        self.last_ns = now
        if sent_ns is not None:
            latency = now - sent_ns
            if count == 1:
                self.latencies.append(latency)
            else:
                self.latencies.extend(array.array("q", [latency]) * count)

    @property
    def over(self) -> bool:
        if not self.finished and time.perf_counter_ns() >= self.end_ns:
            self.finish()  # the timer may not have fired yet: close the window now
        return self.finished

    def finish(self) -> None:
        """Close the window now (it closes by itself at ``end_ns``); emits ``E`` once."""
        if self.finished:
            return
        self.finished = True
        now = time.perf_counter_ns()
        if now < self.end_ns:
            self.end_ns = max(now, self.start_ns + 1)
        self._cpu_end = time.process_time()
        if self._on_finish is not None:
            self._on_finish()

    def summary(self, *, drained: bool) -> Row:
        """Rate and latency; a drained consume window ends at its last completion."""
        self.finish()
        end = self.last_ns if drained and self.count else self.end_ns
        seconds = max(end - self.start_ns, 1) / 1e9
        ordered = sorted(self.latencies)
        return {
            "msgs_per_s": round(self.count / seconds, 1),
            "p50_ms": percentile_ms(ordered, 0.50),
            "p99_ms": percentile_ms(ordered, 0.99),
            "messages": self.count,
            "seconds": round(seconds, 3),
            # The client process's own CPU over the window: near `seconds` means the client was the limit.
            "client_cpu_s": None if self._cpu_end is None else round(self._cpu_end - self._cpu_start, 3),
        }


# ----------------------------------------------------------------------------- processes


def _read_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, utime + stime in clock ticks) of ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read_stat(int(entry))
        if stat is not None:
            children.setdefault(stat[0], []).append(int(entry))
    tree: list[int] = []
    pending = [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds consumed so far by ``pids`` (threads included)."""
    ticks = 0
    for pid in pids:
        stat = _read_stat(pid)
        if stat is not None:
            ticks += stat[1]
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mb(pids: Sequence[int]) -> float:
    """Resident set size (VmRSS) of ``pids`` together, in MiB."""
    total_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
                    break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return round(total_kb / 1024, 1)


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


# ----------------------------------------------------------------------------- cell harness


def emit_line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def measurement_window(spec: CellSpec) -> Recorder:
    """A window opening after the warm-up and lasting ``duration_s``; ``S``/``E`` emitted on time."""
    import asyncio

    loop = asyncio.get_running_loop()
    start = now_ns() + int(spec.warmup_s * 1e9)
    recorder = Recorder(start, start + int(spec.duration_s * 1e9), on_finish=lambda: emit_line(END_LINE))
    loop.call_later(spec.warmup_s, recorder.opened)
    loop.call_later(spec.warmup_s + spec.duration_s, recorder.finish)
    return recorder


def drain_window(spec: CellSpec) -> Recorder:
    """A window opening now (a consume cell's backlog is ready) and lasting at most ``duration_s``."""
    import asyncio

    loop = asyncio.get_running_loop()
    start = now_ns()
    recorder = Recorder(start, start + int(spec.duration_s * 1e9), on_finish=lambda: emit_line(END_LINE))
    recorder.opened()
    loop.call_later(spec.duration_s, recorder.finish)
    return recorder


async def sync_loop(recorder: Recorder, operation: Callable[[], Awaitable[object]]) -> None:
    """One synchronous producer: send, wait for the acknowledgement, repeat until the window closes."""
    while not recorder.over:
        sent = now_ns()
        await operation()
        recorder.done(sent)


async def sync_producers(recorder: Recorder, operations: Sequence[Callable[[], Awaitable[object]]]) -> None:
    """Several synchronous producers at once, one per operation (each with its own connection)."""
    import asyncio

    await asyncio.gather(*(sync_loop(recorder, operation) for operation in operations))


def fill_deadline(spec: CellSpec) -> int:
    return now_ns() + int(spec.fill_s * 1e9)
