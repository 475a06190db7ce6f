from __future__ import annotations

import pytest

from berth.framework.recordio import Decoder, RecordIOError, encode


def test_round_trip_however_the_bytes_are_split() -> None:
    records = [b'{"type":"HEARTBEAT"}', b"", b"x" * 1000, "ünï".encode()]
    stream = b"".join(encode(r) for r in records)
    for size in (1, 2, 7, 64, len(stream)):
        decoder = Decoder()
        out: list[bytes] = []
        for i in range(0, len(stream), size):
            out.extend(decoder.feed(stream[i : i + size]))
        assert out == records


def test_bad_framing_is_an_error() -> None:
    with pytest.raises(RecordIOError, match="bad record length"):
        list(Decoder().feed(b"abc\n{}"))
    with pytest.raises(RecordIOError, match="too long"):
        list(Decoder().feed(b"1" * 30))
    with pytest.raises(RecordIOError, match="too large"):
        list(Decoder().feed(b"999999999999\n"))
