"""logd's store (api/logstore.py) on a real directory: segment rotation and the size cap,
history with filters, reopening after a restart (also after a torn last line), the live
feed, and drops counted into a platform line. Real files and threads; nothing mocked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from berth.api.logstore import (
    MIN_MAX_BYTES,
    AppLog,
    LogStore,
    Segments,
    read_backwards,
    segment_bytes_for,
)
from berth.framework.errors import Invalid
from berth.framework.loglines import Query, Record, timestamp
from tests.support.waiting import wait_for

T0 = 1_800_000_000.0


def rec(n: int, app: str = "myapp", process: str = "web.1", text: str = "") -> Record:
    return Record(timestamp(T0 + n), app, "app", process, "stdout", text or f"line {n}")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LogStore]:
    s = LogStore(tmp_path / "logs", MIN_MAX_BYTES)
    yield s
    s.close()


def written(app: AppLog, count: int) -> tuple[int, list[Record]]:
    """Wait until the writer has `count` records numbered; the history then."""
    seq = wait_for(lambda: app.snapshot()[0] >= count and app.snapshot()[0], 30)
    _, segments = app.snapshot()
    return seq, app.history(Query(lines=100_000), segments)


def test_segments_rotate_and_the_cap_drops_the_oldest_first(tmp_path: Path) -> None:
    cap = MIN_MAX_BYTES
    segments = Segments(tmp_path / "app", cap)
    line = b"x" * 1000 + b"\n"
    for _ in range(200):  # ~2 MB through a 256 KiB cap
        segments.append([line] * 10)
    files = sorted((tmp_path / "app").glob("*.log"))
    assert sum(f.stat().st_size for f in files) <= cap
    assert segments.total == sum(f.stat().st_size for f in files)
    assert all(f.stat().st_size <= segment_bytes_for(cap) for f in files)
    assert len(files) > 1
    numbers = [int(f.stem) for f in files]
    assert numbers == list(range(numbers[0], numbers[0] + len(files)))  # the newest survive
    assert numbers[0] > 1
    segments.close()


def test_a_restart_continues_the_newest_segment_or_starts_one_after_a_torn_line(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "app"
    first = Segments(directory, MIN_MAX_BYTES)
    first.append([rec(1).encode()])
    first.close()
    again = Segments(directory, MIN_MAX_BYTES)
    again.append([rec(2).encode()])
    again.close()
    assert [f.name for f in directory.iterdir()] == ["0000000000000001.log"]
    with (directory / "0000000000000001.log").open("ab") as f:
        f.write(b'{"ts": "torn')  # a crash in the middle of a write
    third = Segments(directory, MIN_MAX_BYTES)
    third.append([rec(3).encode()])
    third.close()
    assert sorted(f.name for f in directory.iterdir()) == [
        "0000000000000001.log",
        "0000000000000002.log",
    ]
    texts = [r.text for r in read_backwards(third.snapshot())]
    assert texts == ["line 3", "line 2", "line 1"]  # the torn line is skipped


def test_history_is_the_last_n_matching_in_order_and_survives_reopening(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    store = LogStore(root, MIN_MAX_BYTES)
    app = store.app("myapp")
    records = [rec(n, process="web.1" if n % 2 else "worker.1") for n in range(1, 101)]
    assert app.ingest(records) == 100
    _, everything = written(app, 100)
    assert everything == records
    _, segments = app.snapshot()
    last = app.history(Query(lines=5), segments)
    assert [r.text for r in last] == [f"line {n}" for n in range(96, 101)]
    workers = app.history(Query(lines=3, ps="worker"), segments)
    assert [r.text for r in workers] == ["line 96", "line 98", "line 100"]
    grep = app.history(Query(lines=100, grep="line 7"), segments)
    assert [r.text for r in grep] == ["line 7"] + [f"line {n}" for n in range(70, 80)]
    since = app.history(Query(lines=100, since=T0 + 98), segments)
    assert [r.text for r in since] == ["line 98", "line 99", "line 100"]
    assert app.history(Query(lines=0), segments) == []
    store.close()

    reopened = LogStore(root, MIN_MAX_BYTES)
    app = reopened.app("myapp")
    _, segments = app.snapshot()
    assert app.history(Query(lines=1000), segments) == records
    app.ingest([rec(101)])
    _, after = written(app, 1)
    assert after == [*records, rec(101)]
    reopened.close()


def test_the_cap_bounds_an_apps_disk_use(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs", MIN_MAX_BYTES)
    app = store.app("noisy")
    for batch in range(40):  # ~1.3 MB through a 256 KiB cap
        records = [rec(batch * 100 + n, app="noisy", text="y" * 200) for n in range(100)]
        assert app.ingest(records) == 100
        wanted = (batch + 1) * 100
        wait_for(lambda: app.snapshot()[0] >= wanted, 30)  # noqa: B023 - used at once
    files = list((tmp_path / "logs" / "noisy").glob("*.log"))
    assert sum(f.stat().st_size for f in files) <= MIN_MAX_BYTES
    _, segments = app.snapshot()
    newest = app.history(Query(lines=1), segments)
    assert newest == [rec(3999, app="noisy", text="y" * 200)]
    oldest = Record.decode(segments[0].path.read_bytes().split(b"\n")[0])
    assert oldest.ts > timestamp(T0 + 2000)  # the oldest lines went first
    store.close()


def test_a_full_queue_drops_and_the_drop_is_written_as_a_platform_line(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs", MIN_MAX_BYTES, queue_bytes=64 * 1024)
    app = store.app("myapp")
    big = [rec(n, text="z" * 10_000) for n in range(50)]  # ~500 KB into a 64 KiB queue
    accepted = app.ingest(big)
    assert accepted < 50
    _, history = wait_for(
        lambda: (h := written(app, 1)) and any(r.source == "berth" for r in h[1]) and h, 30
    )
    notes = [r.text for r in history if r.source == "berth"]
    assert notes == [f"{50 - accepted} lines dropped: logd's buffer for this app was full"]
    assert app.dropped_total == 50 - accepted
    store.close()


def test_follow_hands_out_new_records_and_says_what_a_slow_reader_missed(
    tmp_path: Path,
) -> None:
    store = LogStore(tmp_path / "logs", MIN_MAX_BYTES)
    app = store.app("myapp")
    cursor, _ = app.snapshot()
    assert app.follow(cursor, 0.05) == ([], cursor, 0)
    app.ingest([rec(1), rec(2)])
    records, cursor, missed = wait_for(
        lambda: app.follow(cursor, 1.0)[0] and app.follow(cursor, 0), 30
    )
    assert [r.text for r in records] == ["line 1", "line 2"]
    assert missed == 0
    small = AppLog("other", tmp_path / "other", MIN_MAX_BYTES, feed_records=10)
    start, _ = small.snapshot()
    for n in range(30):
        small.ingest([rec(n, app="other")])
    wait_for(lambda: small.snapshot()[0] >= 30, 30)
    records, cursor, missed = small.follow(start, 0)
    assert len(records) == 10
    assert missed == 20
    assert cursor == 30
    small.close()
    store.close()


def test_app_names_are_checked_before_touching_the_disk(store: LogStore) -> None:
    for bad in ("../etc", "UPPER", "a", ""):
        with pytest.raises(Invalid, match="app name"):
            store.app(bad)
    with pytest.raises(Invalid, match="at least"):
        LogStore(store.root, 1024)
