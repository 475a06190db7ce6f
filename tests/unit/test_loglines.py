"""Log lines: the record, Heroku's format, splitting long lines, --since, the read query and
logd's tokens (framework/loglines.py, pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from berth.framework.errors import Invalid
from berth.framework.loglines import (
    MAX_TEXT_BYTES,
    AppState,
    Query,
    Record,
    crash_text,
    parse_query,
    parse_since,
    parse_size,
    parse_timestamp,
    platform_token,
    read_token,
    split_line,
    state_changes,
    task_token,
    timestamp,
    verify_token,
)
from berth.framework.settings import make_settings

NOW = 1_800_000_000.0
KEY = b"k" * 32


def record(**changes: str) -> Record:
    fields = {
        "ts": "2026-01-02T03:04:05.678901Z",
        "app": "myapp",
        "source": "app",
        "process": "web.1",
        "stream": "stdout",
        "text": "hello",
    }
    fields.update(changes)
    return Record(**fields)


def test_timestamp_is_rfc3339_utc_with_microseconds() -> None:
    assert timestamp(1767323045.678901) == "2026-01-02T03:04:05.678901Z"
    assert timestamp(1767323045.0) == "2026-01-02T03:04:05.000000Z"
    # the date and time are formatted once a second: the next second and an earlier one too
    assert timestamp(1767323046.25) == "2026-01-02T03:04:06.250000Z"
    assert timestamp(1767323045.5) == "2026-01-02T03:04:05.500000Z"
    assert timestamp(1767225599.999999) == "2025-12-31T23:59:59.999999Z"
    assert parse_timestamp("2026-01-02T03:04:05.678901Z") == pytest.approx(1767323045.678901)
    assert parse_timestamp("2026-01-02T04:04:05+01:00") == pytest.approx(1767323045.0)
    with pytest.raises(Invalid, match="time zone"):
        parse_timestamp("2026-01-02T03:04:05")


def test_heroku_format() -> None:
    assert record().heroku() == "2026-01-02T03:04:05.678901Z app[web.1]: hello"
    platform = record(source="berth", process="", text="crashed with exit code 3")
    assert platform.heroku() == "2026-01-02T03:04:05.678901Z berth: crashed with exit code 3"


def test_json_round_trip_keeps_every_field_and_unicode() -> None:
    original = record(text='tab\there "quoted" ünïcödé \\ end')
    line = original.encode()
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert Record.decode(line) == original
    assert json.loads(line)["text"] == original.text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ts": "2026-01-02 03:04:05"}, "timestamp"),
        ({"ts": "2026-01-02T03:04:05Z"}, "microseconds"),
        ({"app": "Bad_App"}, "app name"),
        ({"source": "kernel"}, "source"),
        ({"process": "web 1"}, "process"),
        ({"stream": "stdin"}, "stream"),
        ({"text": "two\nlines"}, "newline"),
        ({"text": "x" * (MAX_TEXT_BYTES + 1)}, "longer"),
        ({"text": "é" * (MAX_TEXT_BYTES // 2 + 1)}, "longer"),
        ({"text": "\ud800"}, "surrogate"),
    ],
)
def test_validation_names_what_is_wrong(changes: dict[str, str], message: str) -> None:
    with pytest.raises(Invalid, match=message):
        Record.from_json(record(**changes).to_json())


def test_a_build_line_names_its_build() -> None:
    """Build output: source build, process = the build's id (12 hex, maybe a leading digit)."""
    line = record(source="build", process="0123456789ab", text="-----> Building")
    assert Record.from_json(line.to_json()) == line
    assert line.heroku() == "2026-01-02T03:04:05.678901Z build[0123456789ab]: -----> Building"
    for bad in ("-1", ".x", "Web.1", "a" * 41):
        with pytest.raises(Invalid, match="process"):
            Record.from_json(record(process=bad).to_json())


def test_from_json_refuses_non_strings_and_non_objects() -> None:
    with pytest.raises(Invalid, match="JSON object"):
        Record.from_json(["x"])
    with pytest.raises(Invalid, match="text must be a string"):
        Record.from_json({**record().to_json(), "text": 3})
    with pytest.raises(Invalid, match="not valid JSON"):
        Record.decode(b"{nope")


def test_split_removes_the_newline_and_keeps_short_lines_whole() -> None:
    assert list(split_line(b"hello\n")) == ["hello"]
    assert list(split_line(b"crlf\r\n")) == ["crlf"]
    assert list(split_line(b"no newline")) == ["no newline"]
    assert list(split_line(b"\n")) == [""]
    assert list(split_line(b"x" * MAX_TEXT_BYTES + b"\n")) == ["x" * MAX_TEXT_BYTES]
    assert list(split_line(b"bad \xff byte\n")) == ["bad \ufffd byte"]  # short: one text
    bad = list(split_line(b"\xff" * MAX_TEXT_BYTES))  # U+FFFD is 3 bytes: 48 KiB in pieces
    assert "".join(bad) == "\ufffd" * MAX_TEXT_BYTES
    assert all(len(p.encode()) <= MAX_TEXT_BYTES for p in bad)


def test_split_a_100_kib_line_keeps_every_byte_in_order() -> None:
    line = bytes(ord("a") + i % 26 for i in range(100 * 1024))
    pieces = list(split_line(line + b"\n"))
    assert len(pieces) == 7
    assert all(len(p.encode()) <= MAX_TEXT_BYTES for p in pieces)
    assert "".join(pieces).encode() == line


def test_split_never_cuts_a_character_in_two() -> None:
    for prefix in range(4):  # shift multi-byte characters across the 16 KiB boundary
        text = "a" * prefix + "€😀é" * 4000
        pieces = list(split_line(text.encode()))
        assert "".join(pieces) == text
        assert all(len(p.encode()) <= MAX_TEXT_BYTES for p in pieces)
        assert all("\ufffd" not in p for p in pieces)


def test_split_replaces_bytes_that_are_not_utf8_and_still_bounds_pieces() -> None:
    pieces = list(split_line(b"\xff" * 20000))
    assert "".join(pieces) == "\ufffd" * 20000
    assert all(len(p.encode()) <= MAX_TEXT_BYTES for p in pieces)


def test_parse_since() -> None:
    assert parse_since("30s", NOW) == NOW - 30
    assert parse_since("10m", NOW) == NOW - 600
    assert parse_since("2h", NOW) == NOW - 7200
    assert parse_since("1d", NOW) == NOW - 86400
    assert parse_since("2026-01-02T03:04:05Z", NOW) == pytest.approx(1767323045.0)
    for bad in ("", "10", "10y", "-5m", "yesterday", "2026-01-02"):
        with pytest.raises(Invalid, match="since"):
            parse_since(bad, NOW)


def test_parse_size() -> None:
    assert parse_size("100m") == 100 * 1024 * 1024
    assert parse_size("512k") == 512 * 1024
    assert parse_size("1G") == 1024**3
    assert parse_size("4096") == 4096
    with pytest.raises(Invalid, match="size"):
        parse_size("lots")


def test_query_parsing_and_its_errors() -> None:
    query = parse_query(
        {"lines": "5", "tail": "1", "ps": "web", "source": "app", "since": "10m", "grep": "x"},
        NOW,
    )
    assert query == Query(5, True, "web", "app", NOW - 600, "x", False)
    assert parse_query({}, NOW) == Query()
    again = parse_query(query.params(), NOW + 5)  # since travels as an absolute time
    assert again.since == pytest.approx(NOW - 600, abs=1e-5)
    assert again == Query(5, True, "web", "app", again.since, "x", False)
    for args, message in [
        ({"lines": "10001"}, "lines"),
        ({"lines": "-1"}, "lines"),
        ({"lines": "many"}, "lines"),
        ({"ps": "Web!"}, "ps"),
        ({"source": "kernel"}, "source"),
        ({"since": "soon"}, "since"),
        ({"grep": "x" * 300}, "grep"),
        ({"tail": "maybe"}, "tail"),
        ({"format": "xml"}, "format"),
        ({"colour": "1"}, "unknown parameter"),
    ]:
        with pytest.raises(Invalid, match=message):
            parse_query(args, NOW)


def test_query_filters() -> None:
    web1 = record()
    worker = record(process="worker.2", stream="stderr", text="boom")
    platform = record(source="berth", process="", text="crashed")
    assert Query(ps="web").matches(web1)
    assert not Query(ps="web").matches(worker)
    assert Query(ps="worker.2").matches(worker)
    assert not Query(ps="web.2").matches(web1)
    assert Query(source="berth").matches(platform)
    assert not Query(source="berth").matches(web1)
    assert Query(grep="oo").matches(worker)
    assert not Query(grep="oo").matches(web1)
    since = parse_timestamp(web1.ts)
    assert Query(since=since).matches(web1)
    assert not Query(since=since + 1).matches(web1)
    assert Query(text=True).render(web1) == (web1.heroku() + "\n").encode()
    assert Query().render(web1) == web1.encode()


def test_crash_text() -> None:
    assert crash_text("failed", 3, False) == "crashed with exit code 3"
    assert crash_text("failed", 137, True) == "crashed: out of memory"
    assert crash_text("finished", 0, False) == "exited with code 0"


def test_state_changes_become_platform_lines() -> None:
    v1 = AppState(1, "Initial release", {})
    v2 = AppState(2, "Deploy img:1", {"web": 1})
    assert state_changes(None, {"a": v2}) == []  # the first look says nothing
    assert state_changes({"a": v1}, {"a": v1}) == []
    assert state_changes({"a": v1}, {"a": v2}) == [
        ("a", "Release v2: Deploy img:1"),
        ("a", "Scaled to web=1"),
    ]
    scaled = AppState(2, "Deploy img:1", {"worker": 3, "web": 0})
    assert state_changes({"a": v2}, {"a": scaled}) == [("a", "Scaled to web=0, worker=3")]
    assert state_changes({"a": v2}, {"a": v2, "b": v1}) == [("b", "Release v1: Initial release")]
    assert state_changes({"a": v2}, {"a": AppState(2, "x", {})}) == [("a", "Scaled to nothing")]


def test_tokens_carry_their_grant_and_only_verify_under_their_key() -> None:
    token = task_token(KEY, "myapp", "web.1", 7)
    grant = verify_token(KEY, token)
    assert grant is not None
    assert (grant.kind, grant.app, grant.process, grant.release) == ("task", "myapp", "web.1", 7)
    assert verify_token(b"o" * 32, token) is None
    forged = token.replace("myapp", "other")  # another app's claim with this app's mac
    assert verify_token(KEY, forged) is None
    platform = verify_token(KEY, platform_token(KEY))
    assert platform is not None
    assert platform.kind == "platform"
    read = verify_token(KEY, read_token(KEY))
    assert read is not None
    assert read.kind == "read"
    assert verify_token(KEY, "") is None
    assert verify_token(KEY, "read/" + "0" * 64) is None


def test_the_logs_address_setting() -> None:
    default = make_settings(Path("/d"), "h:1/c", ":7070", "localhost")
    assert default.logs_url == "http://127.0.0.1:7071"
    wide = make_settings(Path("/d"), "h:1/c", ":7070", "localhost", ":7171")
    assert wide.logs_url == "http://127.0.0.1:7171"  # all interfaces: reached on loopback here
    v6 = make_settings(Path("/d"), "h:1/c", ":7070", "localhost", "[fd00::1]:7171")
    assert v6.logs_url == "http://[fd00::1]:7171"
    with pytest.raises(Invalid, match="address"):
        make_settings(Path("/d"), "h:1/c", ":7070", "localhost", "nowhere")


def test_a_record_encodes_as_json_dumps_would() -> None:
    texts = ["plain", 'quote " and \\ backslash', "tab\tbell\x07nul\x00del\x7f", "é ✓ 🚀", ""]
    for text in texts:
        record = Record("2026-01-02T03:04:05.678901Z", "shop", "app", "web.1", "stderr", text)
        expected = json.dumps(record.to_json(), ensure_ascii=False, separators=(",", ":"))
        assert record.encode() == expected.encode() + b"\n"
        assert Record.decode(record.encode()) == record
