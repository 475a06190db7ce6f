"""RecordIO, the framing of Mesos v1 event streams: `<decimal length>\\n<that many bytes>`,
repeated. Pure; the decoder takes bytes as they arrive, however they are split."""

from __future__ import annotations

from collections.abc import Iterator

MAX_RECORD_BYTES = 64 * 1024 * 1024


class RecordIOError(ValueError):
    pass


def encode(record: bytes) -> bytes:
    return str(len(record)).encode() + b"\n" + record


class Decoder:
    def __init__(self) -> None:
        self._buffer = bytearray()
        self._length: int | None = None

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Add bytes; yield every record now complete."""
        self._buffer += data
        while True:
            if self._length is None:
                newline = self._buffer.find(b"\n")
                if newline < 0:
                    if len(self._buffer) > 20:
                        raise RecordIOError("record length line is too long")
                    return
                header = bytes(self._buffer[:newline]).strip()
                if not header.isdigit():
                    raise RecordIOError(f"bad record length {header[:20]!r}")
                self._length = int(header)
                if self._length > MAX_RECORD_BYTES:
                    raise RecordIOError(f"record of {self._length} bytes is too large")
                del self._buffer[: newline + 1]
            if len(self._buffer) < self._length:
                return
            record = bytes(self._buffer[: self._length])
            del self._buffer[: self._length]
            self._length = None
            yield record
