"""The pure parts of log drains: URL validation, RFC 5424 messages and octet-counting frames,
the capped backoff, a drain's buffer accounting, and a drain worker driven by a sender that
the test controls (a collaborator passed in, not a patch)."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence

import pytest

from berth.api.drains import Buffer, DrainError, Hub, Sender, Worker
from berth.framework.drainurl import (
    Drain,
    Target,
    backoff,
    drain_id,
    frame,
    parse_url,
    syslog_message,
)
from berth.framework.errors import Invalid
from berth.framework.loglines import Record
from tests.support.waiting import wait_for

RFC5424 = re.compile(
    rb"^<(?P<pri>[0-9]{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+)"
    rb" (?P<msgid>\S+) (?P<sd>-)(?: (?P<msg>.*))?$",
    re.DOTALL,
)


def record(text: str = "hello", stream: str = "stdout", process: str = "web.1") -> Record:
    return Record("2026-01-02T03:04:05.678901Z", "shop", "app", process, stream, text)


# -- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "url", "display"),
    [
        ("syslog://Logs.Example.com:514", "syslog://logs.example.com:514", None),
        ("syslog://logs.example.com", "syslog://logs.example.com:514", None),
        ("syslog+tls://10.0.0.5:6514/", "syslog+tls://10.0.0.5:6514", None),
        ("SYSLOG+TLS://[::1]:7000", "syslog+tls://[::1]:7000", None),
        ("https://collector.example.com", "https://collector.example.com:443/", None),
        (
            "https://c.example.com:8443/in?token=s3cret",
            "https://c.example.com:8443/in?token=s3cret",
            "https://c.example.com:8443/in?…",
        ),
    ],
)
def test_good_urls_are_normalised(given: str, url: str, display: str | None) -> None:
    target = parse_url(given)
    assert target.url == url
    assert target.display == (display or url)
    assert parse_url(target.url) == target  # stable


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "give the drain as a URL"),
        (42, "give the drain as a URL"),
        ("logs.example.com:514", "the scheme must be syslog, syslog+tls or https"),
        ("ftp://logs.example.com", "the scheme must be"),
        ("http://logs.example.com/in", "plain http:// is not accepted"),
        ("syslog://:514", "a host is missing"),
        ("syslog://logs.example.com:0", "port must be a number from 1 to 65535"),
        ("syslog://logs.example.com:70000", "port must be a number from 1 to 65535"),
        ("syslog://logs.example.com:http", "port must be a number from 1 to 65535"),
        ("syslog://logs.example.com:", "port must be a number from 1 to 65535"),
        ("syslog://logs.example.com:514/path", "only a host and port"),
        ("syslog://logs_example.com:514", "not a valid host name"),
        ("syslog://bücher.example:514", "punycode"),
        ("syslog://[::1:514", "IPv6"),
        ("syslog://logs.example.com :514", "spaces and control characters"),
        ("https://c.example.com/#frag", "fragment"),
        ("https://" + "a" * 1100 + ".com", "longer than 1024"),
    ],
)
def test_bad_urls_say_what_is_wrong(given: object, message: str) -> None:
    with pytest.raises(Invalid, match=re.escape(message)):
        parse_url(given)


def test_credentials_are_refused_and_never_repeated() -> None:
    with pytest.raises(Invalid) as caught:
        parse_url("https://user:hunter2@c.example.com/in")
    assert "credentials" in caught.value.message
    assert "hunter2" not in caught.value.message
    assert "user" not in caught.value.message.split("(")[0]


def test_a_drain_id_follows_the_normalised_url() -> None:
    a = Drain.new("syslog://LOGS.example.com", "t")
    b = Drain.new("syslog://logs.example.com:514/", "t")
    assert a.id == b.id == drain_id("syslog://logs.example.com:514")
    assert re.fullmatch(r"d\.[0-9a-f]{12}", a.id)
    assert Drain.from_json(a.to_json()) == a


# -- RFC 5424 and RFC 6587 ----------------------------------------------------------------------


def test_a_stdout_line_is_an_rfc5424_message() -> None:
    message = syslog_message(record("GET / 200 in 3 ms"))
    match = RFC5424.fullmatch(message)
    assert match is not None
    assert int(match["pri"]) == 1 * 8 + 6  # user, informational
    assert match["ts"] == b"2026-01-02T03:04:05.678901Z"
    assert match["host"] == b"shop"
    assert match["app"] == b"app"
    assert match["procid"] == b"web.1"
    assert match["msgid"] == b"-"
    assert match["msg"] == b"GET / 200 in 3 ms"


def test_stderr_is_err_and_an_empty_process_is_a_dash() -> None:
    message = syslog_message(record("boom", stream="stderr", process=""))
    match = RFC5424.fullmatch(message)
    assert match is not None
    assert int(match["pri"]) == 1 * 8 + 3
    assert match["procid"] == b"-"


def test_header_fields_keep_only_printable_ascii_and_a_dash_for_nothing() -> None:
    message = syslog_message(record("x", process="wéb 1\t"))
    match = RFC5424.fullmatch(message)
    assert match is not None
    assert match["procid"] == b"wb1"
    match = RFC5424.fullmatch(syslog_message(record("x", process=" \x7f")))
    assert match is not None
    assert match["procid"] == b"-"


def test_an_empty_line_has_no_msg_and_utf8_is_kept() -> None:
    assert syslog_message(record("")).endswith(b" - -")
    assert syslog_message(record("héllo ✓")).endswith(" héllo ✓".encode())


def test_octet_counting_counts_bytes_not_characters() -> None:
    message = syslog_message(record("✓"))
    framed = frame(message)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(message) == len(rest)
    assert rest == message


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff(n) for n in range(5)] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert backoff(7) == 30.0
    assert backoff(10_000) == 30.0


# -- the buffer -----------------------------------------------------------------------------------


def test_the_buffer_counts_what_does_not_fit_and_keeps_order() -> None:
    buffer = Buffer(max_records=3, max_bytes=10_000)
    assert buffer.offer([record(str(i)) for i in range(5)]) == 3
    assert buffer.dropped_total == 2
    assert [r.text for r in buffer.take(10, 1 << 20, 0)] == ["0", "1", "2"]
    assert buffer.take_dropped() == 2
    assert buffer.take_dropped() == 0
    assert buffer.offer([record("5")]) == 1  # room again
    assert buffer.dropped_total == 2


def test_the_buffer_is_bounded_by_bytes_and_batches_by_bytes() -> None:
    cost = Buffer.cost(record("x" * 100))
    buffer = Buffer(max_records=100, max_bytes=cost * 4)
    assert buffer.offer([record("x" * 100)] * 6) == 4
    assert len(buffer.take(100, cost * 2, 0)) == 2
    assert len(buffer.take(100, 1, 0)) == 1  # a batch takes at least one record
    assert buffer.take(100, 1 << 20, 0) != []
    assert buffer.take(100, 1 << 20, 0) == []


# -- a worker with a sender the test controls -----------------------------------------------------


class Flaky:
    """A sender that fails while `down` is set and records what it was sent."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.sent: list[str] = []
        self.attempts = 0

    def send(self, batch: Sequence[Record]) -> None:
        self.attempts += 1
        if self.down.is_set():
            raise DrainError("answered HTTP 503")
        self.sent.extend(r.text for r in batch)

    def close(self) -> None:
        pass


def test_a_worker_retries_its_batch_and_reports_drops() -> None:
    sender = Flaky()
    sender.down.set()
    notes: list[tuple[str, str]] = []
    drain = Drain.new("syslog://logs.example.com:514", "t")
    worker = Worker(
        "shop",
        drain,
        sender,
        lambda app, text: notes.append((app, text)),
        buffer=Buffer(max_records=10),
        report_every=0.0,
    )
    worker.start()
    try:
        worker.buffer.offer([record(f"line {i}") for i in range(15)])
        wait_for(lambda: sender.attempts >= 2, 10)
        stats = worker.stats()
        assert stats.status == "retrying"
        assert stats.last_error == "answered HTTP 503"
        assert stats.dropped == 5
        wait_for(lambda: notes, 10)
        assert notes[0][0] == "shop"
        assert notes[0][1].startswith("drain syslog://logs.example.com:514: 5 lines dropped")
        sender.down.clear()
        wait_for(lambda: len(sender.sent) == 10, 10)
        assert sender.sent == [f"line {i}" for i in range(10)]  # the failed batch, in order
        assert worker.stats().status == "up"
        assert worker.stats().delivered == 10
    finally:
        worker.stop()
        worker.join(5)


def test_the_hub_follows_the_drain_list_and_a_dead_drain_does_not_hold_the_others() -> None:
    senders: dict[str, Flaky] = {}

    def make(target: Target) -> Sender:
        senders[target.url] = Flaky()
        if "dead" in target.url:
            senders[target.url].down.set()
        return senders[target.url]

    hub = Hub(lambda app, text: None, make)
    dead = Drain.new("syslog://dead.example.com:514", "t")
    live = Drain.new("https://live.example.com/in", "t")
    hub.update({"shop": [dead, live]})
    try:
        for i in range(3):
            hub.deliver("shop", [record(f"n{i}")])
        hub.deliver("other", [record("not for shop's drains")])
        wait_for(lambda: senders[live.url].sent == ["n0", "n1", "n2"], 10)
        assert set(hub.stats("shop")) == {dead.id, live.id}
        hub.update({"shop": [live]})
        assert set(hub.stats("shop")) == {live.id}
        hub.update({})
        assert hub.stats("shop") == {}
    finally:
        hub.close()
