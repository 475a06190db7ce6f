"""The executor's log cursor: which of the messages Docker's log API sends are new, across
the passes the executor makes (follow, then a re-read from a whole second) and the repeats
Docker's follow sends when it reopens a rotated file."""

from __future__ import annotations

from berth.executor.containers import Stream, _Cursor

T1 = "2026-12-03T06:55:00.000000001Z"
T2 = "2026-12-03T06:55:00.000000002Z"
T3 = "2026-12-03T06:55:01.500000000Z"
Message = tuple[Stream, str, bytes]


def fresh(cursor: _Cursor, messages: list[Message]) -> list[bytes]:
    return [data for stream, stamp, data in messages if cursor.fresh(stream, stamp, data)]


def test_a_second_pass_yields_only_what_the_first_did_not() -> None:
    cursor = _Cursor()
    assert cursor.new_pass() == 0
    first: list[Message] = [("stdout", T1, b"a\n"), ("stderr", T2, b"e\n"), ("stdout", T2, b"b\n")]
    assert fresh(cursor, first) == [b"a\n", b"e\n", b"b\n"]
    assert cursor.new_pass() == 1796280900  # the oldest stream's whole second, inclusive
    again: list[Message] = [*first, ("stdout", T3, b"c\n")]
    assert fresh(cursor, again) == [b"c\n"]


def test_the_parts_of_one_long_line_share_a_timestamp_and_all_count() -> None:
    cursor = _Cursor()
    cursor.new_pass()
    parts: list[Message] = [
        ("stdout", T1, b"x" * 16384),
        ("stdout", T1, b"x" * 16384),
        ("stdout", T1, b"x\n"),
    ]
    assert len(fresh(cursor, parts[:2])) == 2  # the stream ended mid-line
    cursor.new_pass()
    assert fresh(cursor, parts) == [b"x\n"]  # the re-read skips the parts already seen


def test_a_line_repeated_after_a_log_rotation_is_skipped() -> None:
    cursor = _Cursor()
    cursor.new_pass()
    # Docker's follow reopened the rotated file and sent the newest line, and an older, again
    messages: list[Message] = [
        ("stdout", T1, b"a\n"),
        ("stdout", T2, b"b\n"),
        ("stdout", T1, b"a\n"),
        ("stdout", T2, b"b\n"),
        ("stdout", T3, b"c\n"),
    ]
    assert fresh(cursor, messages) == [b"a\n", b"b\n", b"c\n"]
