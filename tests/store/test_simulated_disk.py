from __future__ import annotations

import errno
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homing.store.disk import Disk, OsDisk
from homing.store.simulated_disk import SimulatedDisk, SimulatedFile

# -- parity with the real file system: the same scenarios run on OsDisk and SimulatedDisk


@pytest.fixture(params=["os", "simulated"])
def disk_root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Disk, str]]:
    if request.param == "os":
        yield OsDisk(), str(tmp_path)
    else:
        disk = SimulatedDisk()
        disk.make_dirs("/data")
        yield disk, "/data"


def test_write_read_size(disk_root: tuple[Disk, str]) -> None:
    disk, root = disk_root
    f = disk.open(f"{root}/a", create=True)
    assert f.path == f"{root}/a"
    assert f.size() == 0
    f.pwrite(b"hello", 0)
    f.pwrite(memoryview(b"XY"), 1)
    f.pwrite(bytearray(b"!"), 5)
    assert f.pread(100, 0) == b"hXYlo!"
    assert f.pread(2, 4) == b"o!"
    assert f.pread(10, 6) == b""
    assert f.pread(10, 1000) == b""
    assert f.size() == 6
    f.close()
    f.close()  # idempotent


def test_write_past_end_fills_with_zeros(disk_root: tuple[Disk, str]) -> None:
    disk, root = disk_root
    f = disk.open(f"{root}/a", create=True)
    f.pwrite(b"ab", 0)
    f.pwrite(b"z", 5)
    assert f.size() == 6
    assert f.pread(6, 0) == b"ab\0\0\0z"
    f.close()


def test_truncate_shrinks_and_extends(disk_root: tuple[Disk, str]) -> None:
    disk, root = disk_root
    f = disk.open(f"{root}/a", create=True)
    f.pwrite(b"abcdef", 0)
    f.truncate(3)
    assert f.size() == 3
    assert f.pread(10, 0) == b"abc"
    f.truncate(5)
    assert f.pread(10, 0) == b"abc\0\0"
    f.close()


def test_reopen_sees_content(disk_root: tuple[Disk, str]) -> None:
    disk, root = disk_root
    f = disk.open(f"{root}/a", create=True)
    f.pwrite(b"data", 0)
    f.close()
    g = disk.open(f"{root}/a")
    assert g.pread(10, 0) == b"data"
    g.close()
    h = disk.open(f"{root}/a", create=True)  # create on an existing file keeps it
    assert h.size() == 4
    h.close()


def test_open_errors(disk_root: tuple[Disk, str]) -> None:
    disk, root = disk_root
    with pytest.raises(FileNotFoundError):
        disk.open(f"{root}/missing")
    with pytest.raises(FileNotFoundError):
        disk.open(f"{root}/no/such/dir", create=True)
    disk.make_dirs(f"{root}/sub")
    with pytest.raises(IsADirectoryError):
        disk.open(f"{root}/sub")


def test_directory_operations(disk_root: tuple[Disk, str]) -> None:
    disk, root = disk_root
    assert disk.list_dir(root) == []
    assert disk.list_dir(f"{root}/missing") == []
    disk.make_dirs(f"{root}/x/y/z")
    disk.make_dirs(f"{root}/x/y")  # already there
    assert disk.exists(f"{root}/x/y/z")
    assert not disk.exists(f"{root}/x/q")
    for name in ["b", "a", "c"]:
        disk.open(f"{root}/x/{name}", create=True).close()
    assert disk.list_dir(f"{root}/x") == ["a", "b", "c", "y"]
    assert disk.exists(f"{root}/x/./y/../a")
    disk.remove(f"{root}/x/b")
    assert disk.list_dir(f"{root}/x") == ["a", "c", "y"]
    with pytest.raises(FileNotFoundError):
        disk.remove(f"{root}/x/b")
    with pytest.raises(FileExistsError):
        disk.make_dirs(f"{root}/x/a")
    with pytest.raises(NotADirectoryError):
        disk.list_dir(f"{root}/x/a")
    disk.sync_dir(f"{root}/x")
    with pytest.raises(FileNotFoundError):
        disk.sync_dir(f"{root}/missing")


def test_rename_replaces_target(disk_root: tuple[Disk, str]) -> None:
    disk, root = disk_root
    for name, content in [("old", b"old"), ("new", b"new")]:
        f = disk.open(f"{root}/{name}", create=True)
        f.pwrite(content, 0)
        f.close()
    disk.rename(f"{root}/new", f"{root}/old")
    assert disk.list_dir(root) == ["old"]
    f = disk.open(f"{root}/old")
    assert f.pread(10, 0) == b"new"
    f.close()
    with pytest.raises(FileNotFoundError):
        disk.rename(f"{root}/new", f"{root}/other")
    disk.make_dirs(f"{root}/d")
    with pytest.raises(IsADirectoryError):
        disk.rename(f"{root}/old", f"{root}/d")
    disk.rename(f"{root}/d", f"{root}/e")
    assert disk.list_dir(root) == ["e", "old"]


def test_handle_survives_rename_and_remove(disk_root: tuple[Disk, str]) -> None:
    disk, root = disk_root
    f = disk.open(f"{root}/a", create=True)
    disk.rename(f"{root}/a", f"{root}/b")
    f.pwrite(b"moved", 0)
    disk.remove(f"{root}/b")
    assert f.pread(10, 0) == b"moved"
    f.close()
    assert disk.list_dir(root) == []


def test_usage(disk_root: tuple[Disk, str]) -> None:
    disk, root = disk_root
    usage = disk.usage(root)
    assert 0 <= usage.used_bytes <= usage.total_bytes
    assert 0.0 <= usage.used_ratio <= 1.0
    with pytest.raises(FileNotFoundError):
        disk.usage(f"{root}/missing")


def test_os_disk_usage_is_what_df_shows(tmp_path: Path) -> None:
    # The guard's ratio must be the one operators read in df, not one inflated by root's reserve.
    shown = (
        subprocess.run(["df", "-P", str(tmp_path)], capture_output=True, text=True, check=True)
        .stdout.splitlines()[-1]
        .split()
    )
    used_kib, available_kib, percent = int(shown[2]), int(shown[3]), int(shown[4].rstrip("%"))
    usage = OsDisk().usage(str(tmp_path))
    assert abs(usage.used_bytes / 1024 - used_kib) < 64 * 1024  # other writers between the calls
    assert abs(usage.total_bytes / 1024 - (used_kib + available_kib)) < 64 * 1024
    assert percent - 1 <= usage.used_ratio * 100 <= percent  # df rounds its percentage up


# -- durability


def write_file(disk: SimulatedDisk, path: str, data: bytes, *, sync: bool = True) -> None:
    f = disk.open(path, create=True)
    f.pwrite(data, 0)
    if sync:
        f.sync()
    f.close()


def read_file(disk: SimulatedDisk, path: str) -> bytes:
    f = disk.open(path)
    try:
        return f.pread(f.size(), 0)
    finally:
        f.close()


@pytest.fixture
def disk() -> SimulatedDisk:
    disk = SimulatedDisk(seed=7)
    disk.make_dirs("/d")
    return disk


def test_crash_drops_unsynced_writes(disk: SimulatedDisk) -> None:
    f = disk.open("/d/log", create=True)
    disk.sync_dir("/d")
    f.pwrite(b"synced", 0)
    f.sync()
    f.pwrite(b"-lost", 6)
    f.pwrite(b"S", 0)
    assert f.pread(100, 0) == b"Synced-lost"
    disk.crash()
    assert read_file(disk, "/d/log") == b"synced"


def test_crash_keeps_synced_writes(disk: SimulatedDisk) -> None:
    f = disk.open("/d/log", create=True)
    disk.sync_dir("/d")
    f.pwrite(b"one", 0)
    f.pwrite(b"two", 3)
    f.truncate(5)
    f.sync()
    assert disk.durable_content("/d/log") == b"onetw"
    disk.crash()
    assert read_file(disk, "/d/log") == b"onetw"


def test_unsynced_truncate_is_undone(disk: SimulatedDisk) -> None:
    write_file(disk, "/d/log", b"abcdef")
    disk.sync_dir("/d")
    f = disk.open("/d/log")
    f.truncate(2)
    disk.crash()
    assert read_file(disk, "/d/log") == b"abcdef"


def test_file_not_dir_synced_vanishes(disk: SimulatedDisk) -> None:
    write_file(disk, "/d/new", b"content")  # the file itself is synced, its directory is not
    assert disk.exists("/d/new")
    assert disk.durable_content("/d/new") is None
    disk.crash()
    assert not disk.exists("/d/new")
    assert disk.list_dir("/d") == []


def test_dir_synced_file_survives(disk: SimulatedDisk) -> None:
    write_file(disk, "/d/new", b"content")
    disk.sync_dir("/d")
    disk.crash()
    assert disk.list_dir("/d") == ["new"]
    assert read_file(disk, "/d/new") == b"content"


def test_rename_not_dir_synced_is_undone(disk: SimulatedDisk) -> None:
    write_file(disk, "/d/segment", b"old")
    write_file(disk, "/d/segment.tmp", b"new")
    disk.sync_dir("/d")
    disk.rename("/d/segment.tmp", "/d/segment")
    assert read_file(disk, "/d/segment") == b"new"
    assert disk.durable_content("/d/segment") == b"old"
    disk.crash()
    assert disk.list_dir("/d") == ["segment", "segment.tmp"]
    assert read_file(disk, "/d/segment") == b"old"
    assert read_file(disk, "/d/segment.tmp") == b"new"


def test_dir_synced_rename_survives(disk: SimulatedDisk) -> None:
    write_file(disk, "/d/segment", b"old")
    write_file(disk, "/d/segment.tmp", b"new")
    disk.sync_dir("/d")
    disk.rename("/d/segment.tmp", "/d/segment")
    disk.sync_dir("/d")
    disk.crash()
    assert disk.list_dir("/d") == ["segment"]
    assert read_file(disk, "/d/segment") == b"new"


def test_remove_not_dir_synced_is_undone(disk: SimulatedDisk) -> None:
    write_file(disk, "/d/f", b"x")
    disk.sync_dir("/d")
    disk.remove("/d/f")
    disk.crash()
    assert read_file(disk, "/d/f") == b"x"


def test_directory_not_durable_in_parent_vanishes_with_its_files(disk: SimulatedDisk) -> None:
    disk.make_dirs("/d/made")  # durable in /d
    assert disk.stats.dir_syncs == 2
    disk.open("/d/made/f", create=True).close()
    disk.sync_dir("/d/made")
    disk.rename("/d/made", "/d/moved")
    disk.crash()
    assert disk.list_dir("/d") == ["made"]
    assert disk.list_dir("/d/made") == ["f"]


def test_handles_invalid_after_crash(disk: SimulatedDisk) -> None:
    f = disk.open("/d/f", create=True)
    disk.sync_dir("/d")
    disk.crash()
    for use in (lambda: f.pread(1, 0), lambda: f.pwrite(b"x", 0), f.sync, f.size, lambda: f.truncate(0)):
        with pytest.raises(OSError) as raised:
            use()
        assert raised.value.errno == errno.EBADF
    f.close()  # harmless
    g = disk.open("/d/f")  # a new handle works
    assert g.size() == 0


def test_closed_handle_is_invalid(disk: SimulatedDisk) -> None:
    f = disk.open("/d/f", create=True)
    f.close()
    with pytest.raises(OSError) as raised:
        f.pread(1, 0)
    assert raised.value.errno == errno.EBADF


# -- torn writes


def torn_run(seed: int) -> bytes:
    disk = SimulatedDisk(seed=seed)
    disk.make_dirs("/d")
    f = disk.open("/d/log", create=True)
    disk.sync_dir("/d")
    f.pwrite(b"base", 0)
    f.sync()
    for i in range(10):
        f.pwrite(bytes([65 + i]) * 10, 4 + 10 * i)
    disk.crash(torn=True)
    return read_file(disk, "/d/log")


def test_torn_crash_keeps_a_prefix() -> None:
    full = b"base" + b"".join(bytes([65 + i]) * 10 for i in range(10))
    results = {torn_run(seed) for seed in range(40)}
    for content in results:
        assert content.startswith(b"base")
        assert full.startswith(content)
    assert len(results) > 5  # seeds actually vary the outcome
    assert any(len(content) % 10 != 4 for content in results)  # some writes were cut mid-way
    assert any(len(content) < len(full) - 10 for content in results)  # some were dropped whole


def test_torn_crash_is_reproducible() -> None:
    assert [torn_run(seed) for seed in range(10)] == [torn_run(seed) for seed in range(10)]


def test_torn_crash_content_becomes_durable() -> None:
    disk = SimulatedDisk(seed=3)
    f = disk.open("/log", create=True)
    disk.sync_dir("/")
    f.pwrite(b"x" * 100, 0)
    disk.crash(torn=True)
    survived = read_file(disk, "/log")
    assert disk.durable_content("/log") == survived
    disk.crash(torn=True)
    assert read_file(disk, "/log") == survived


# -- fault injection


def test_failed_sync_then_successful_sync_loses_data(disk: SimulatedDisk) -> None:
    """The Linux fsync trap: the retried sync returns, but the bytes never reach the platter."""
    f = disk.open("/d/log", create=True)
    disk.sync_dir("/d")
    f.pwrite(b"first", 0)
    f.sync()
    f.pwrite(b"-second", 5)
    disk.fail_next_sync(errno.EIO)
    with pytest.raises(OSError) as raised:
        f.sync()
    assert raised.value.errno == errno.EIO
    assert f.pread(100, 0) == b"first-second"  # the page cache still shows the data
    f.sync()  # "succeeds"
    assert disk.durable_content("/d/log") == b"first"
    disk.crash()
    assert read_file(disk, "/d/log") == b"first"


def test_writes_after_failed_sync_are_durable_over_a_hole(disk: SimulatedDisk) -> None:
    f = disk.open("/d/log", create=True)
    disk.sync_dir("/d")
    f.pwrite(b"aaaa", 0)
    disk.fail_next_sync()
    with pytest.raises(OSError):
        f.sync()
    f.pwrite(b"bb", 4)
    f.sync()
    disk.crash()
    assert read_file(disk, "/d/log") == b"\0\0\0\0bb"


def test_sync_fault_matches_path(disk: SimulatedDisk) -> None:
    a = disk.open("/d/a.log", create=True)
    b = disk.open("/d/b.index", create=True)
    disk.fail_next_sync(errno.EIO, path_substring=".index")
    a.sync()
    with pytest.raises(OSError):
        b.sync()
    b.sync()  # fired once only


def test_failed_sync_dir_leaves_entries_volatile(disk: SimulatedDisk) -> None:
    write_file(disk, "/d/f", b"x")
    disk.fail_next_sync_dir(errno.EIO, path_substring="/d")
    with pytest.raises(OSError) as raised:
        disk.sync_dir("/d")
    assert raised.value.errno == errno.EIO
    disk.crash()
    assert not disk.exists("/d/f")


def test_fail_next_write_partial(disk: SimulatedDisk) -> None:
    f = disk.open("/d/log", create=True)
    disk.fail_next_write(errno.EIO, path_substring="log", after_bytes=3)
    with pytest.raises(OSError) as raised:
        f.pwrite(b"abcdef", 0)
    assert raised.value.errno == errno.EIO
    assert f.pread(10, 0) == b"abc"
    f.pwrite(b"abcdef", 0)  # fired once only
    assert f.pread(10, 0) == b"abcdef"


def test_fail_next_write_skips_other_paths(disk: SimulatedDisk) -> None:
    other = disk.open("/d/other", create=True)
    target = disk.open("/d/target", create=True)
    disk.fail_next_write(errno.ENOSPC, path_substring="target")
    other.pwrite(b"fine", 0)
    with pytest.raises(OSError) as raised:
        target.pwrite(b"x", 0)
    assert raised.value.errno == errno.ENOSPC
    assert target.size() == 0
    disk.fail_next_write(errno.EIO)
    disk.clear_faults()
    target.pwrite(b"x", 0)


def test_enospc_partial_write_at_capacity() -> None:
    disk = SimulatedDisk(capacity_bytes=10)
    f = disk.open("/a", create=True)
    f.pwrite(b"123456", 0)
    with pytest.raises(OSError) as raised:
        f.pwrite(b"abcdef", 6)
    assert raised.value.errno == errno.ENOSPC
    assert f.pread(100, 0) == b"123456abcd"
    assert disk.usage("/").used_bytes == 10
    assert disk.usage("/").total_bytes == 10
    f.pwrite(b"XYZ", 0)  # overwriting needs no space
    with pytest.raises(OSError):
        f.truncate(11)
    disk.set_capacity(12)
    f.pwrite(b"ef", 10)
    assert f.pread(100, 0) == b"XYZ456abcdef"


def test_space_is_freed_by_remove_only_after_close() -> None:
    disk = SimulatedDisk(capacity_bytes=8)
    f = disk.open("/a", create=True)
    f.pwrite(b"12345678", 0)
    disk.remove("/a")
    assert disk.usage("/").used_bytes == 8  # still open
    f.close()
    assert disk.usage("/").used_bytes == 0
    write_file(disk, "/b", b"87654321")
    write_file(disk, "/c", b"")
    disk.rename("/c", "/b")  # the replaced file's space is freed
    assert disk.usage("/").used_bytes == 0


def test_usage_after_crash_counts_surviving_files() -> None:
    disk = SimulatedDisk(capacity_bytes=100)
    write_file(disk, "/kept", b"x" * 10)
    disk.sync_dir("/")
    write_file(disk, "/lost", b"y" * 20)
    assert disk.usage("/").used_bytes == 30
    disk.crash()
    assert disk.usage("/").used_bytes == 10


def test_flip_bit(disk: SimulatedDisk) -> None:
    write_file(disk, "/d/f", b"\x00\x00\x00")
    disk.sync_dir("/d")
    disk.flip_bit("/d/f", 1, bit=3)
    assert read_file(disk, "/d/f") == b"\x00\x08\x00"
    assert disk.durable_content("/d/f") == b"\x00\x08\x00"
    disk.crash()
    assert read_file(disk, "/d/f") == b"\x00\x08\x00"
    with pytest.raises(ValueError):
        disk.flip_bit("/d/f", 3)


def test_stats_count_operations(disk: SimulatedDisk) -> None:
    before = disk.stats
    f = disk.open("/d/f", create=True)
    f.pwrite(b"a", 0)
    f.pwrite(b"b", 1)
    f.sync()
    disk.sync_dir("/d")
    disk.crash()
    after = disk.stats
    assert (after.writes, after.syncs, after.dir_syncs, after.crashes) == (
        before.writes + 2,
        before.syncs + 1,
        before.dir_syncs + 1,
        before.crashes + 1,
    )


def test_relative_paths_resolve_from_root() -> None:
    disk = SimulatedDisk()
    disk.make_dirs("a/b")
    assert disk.exists("/a/b")
    f = disk.open("a//b/./f", create=True)
    assert f.path == "a//b/./f"
    assert disk.list_dir("/a/b") == ["f"]


def test_concurrent_writer_and_flusher() -> None:
    disk = SimulatedDisk()
    f = disk.open("/log", create=True)
    disk.sync_dir("/")
    done = threading.Event()

    def write() -> None:
        for i in range(2000):
            f.pwrite(i.to_bytes(4, "big"), 4 * i)
        done.set()

    def flush() -> None:
        while not done.is_set():
            f.sync()

    threads = [threading.Thread(target=write), threading.Thread(target=flush)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    f.sync()
    disk.crash()
    content = read_file(disk, "/log")
    assert content == b"".join(i.to_bytes(4, "big") for i in range(2000))


# -- property: after a crash, a file holds exactly what was last synced

_op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 40), st.binary(min_size=0, max_size=12)),
    st.tuples(st.just("truncate"), st.integers(0, 40), st.just(b"")),
    st.tuples(st.just("sync"), st.just(0), st.just(b"")),
    st.tuples(st.just("crash"), st.just(0), st.just(b"")),
)


def _model_apply(content: bytearray, kind: str, offset: int, data: bytes) -> None:
    if kind == "truncate":
        del content[offset:]
        content.extend(bytes(offset - len(content)))
    elif data:
        content.extend(bytes(max(0, offset + len(data) - len(content))))
        content[offset : offset + len(data)] = data


@settings(max_examples=300, deadline=None)
@given(st.lists(_op, max_size=40))
def test_crash_restores_last_synced_content(ops: list[tuple[str, int, bytes]]) -> None:
    disk = SimulatedDisk()
    handle: SimulatedFile = disk.open("/f", create=True)
    disk.sync_dir("/")
    current, synced = bytearray(), b""
    for kind, offset, data in [*ops, ("crash", 0, b"")]:
        if kind == "sync":
            handle.sync()
            synced = bytes(current)
        elif kind == "crash":
            disk.crash()
            handle = disk.open("/f")
            current = bytearray(synced)
            assert handle.pread(1000, 0) == synced
        elif kind == "write":
            handle.pwrite(data, offset)
            _model_apply(current, kind, offset, data)
        else:
            handle.truncate(offset)
            _model_apply(current, kind, offset, data)
        assert handle.pread(1000, 0) == current
        assert disk.durable_content("/f") == synced


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=8),
    st.lists(st.tuples(st.integers(0, 20), st.binary(min_size=1, max_size=6)), max_size=6),
    st.integers(0, 1000),
)
def test_torn_crash_is_a_prefix_of_the_writes(
    base: bytes, writes: list[tuple[int, bytes]], seed: int
) -> None:
    disk = SimulatedDisk(seed=seed)
    f = disk.open("/f", create=True)
    disk.sync_dir("/")
    f.pwrite(base, 0)
    f.sync()
    for offset, data in writes:
        f.pwrite(data, offset)
    disk.crash(torn=True)
    survived = read_file(disk, "/f")
    possible = set()
    for kept in range(len(writes) + 1):
        prefix = bytearray(base)
        for offset, data in writes[:kept]:
            _model_apply(prefix, "write", offset, data)
        possible.add(bytes(prefix))
        if kept < len(writes):
            offset, data = writes[kept]
            for cut in range(1, len(data)):
                torn = bytearray(prefix)
                _model_apply(torn, "write", offset, data[:cut])
                possible.add(bytes(torn))
    assert survived in possible
