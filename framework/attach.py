"""The frames of an attached one-off run (`berth run`), as the executor and the API speak them
over a websocket: one binary message is one frame, its first byte the channel, the rest the
payload. The CLI speaks the same frames (cli/attachwire.py: the CLI may not import the
framework; tests/unit/test_attach.py checks that both agree byte for byte).

    0 stdin      client → process: bytes for the process's stdin (its TTY in TTY mode)
    1 stdout     process → client
    2 stderr     process → client (never in TTY mode: a TTY has one output)
    3 stdin-eof  client → process: no more stdin (pipes mode)
    4 resize     client → process: {"cols": C, "rows": R} (TTY mode)
    5 signal     client → process: a signal name, like "INT" or "TERM"
    6 exit       process → client: {"code": N} (or {"code": N, "error": "…"} when the run
                 could not be started), the last frame
    7 error      API → client: a reason the run ended before it began ({"message": "…"})

Pure: bytes in, values out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

STDIN, STDOUT, STDERR, STDIN_EOF, RESIZE, SIGNAL, EXIT, ERROR = range(8)
CHANNELS = frozenset(range(8))
SIGNALS = frozenset({"INT", "TERM", "HUP", "QUIT", "USR1", "USR2", "WINCH"})
MAX_FRAME = 64 * 1024  # bytes of payload per frame, both ways


class BadFrame(ValueError):
    """A frame Berth does not understand (empty, unknown channel, bad payload)."""


@dataclass(frozen=True, slots=True)
class Frame:
    channel: int
    data: bytes = b""

    def encode(self) -> bytes:
        return bytes([self.channel]) + self.data

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.data)
        except ValueError:
            raise BadFrame(f"channel {self.channel}: payload is not JSON") from None
        if not isinstance(value, dict):
            raise BadFrame(f"channel {self.channel}: payload is not a JSON object")
        return value


def decode(message: bytes | str) -> Frame:
    if isinstance(message, str):
        raise BadFrame("frames are binary messages")
    if not message:
        raise BadFrame("empty frame")
    if message[0] not in CHANNELS:
        raise BadFrame(f"unknown channel {message[0]}")
    if len(message) - 1 > MAX_FRAME:
        raise BadFrame(f"frame larger than {MAX_FRAME} bytes")
    return Frame(message[0], bytes(message[1:]))


def _json(channel: int, value: dict[str, Any]) -> bytes:
    return Frame(channel, json.dumps(value, sort_keys=True).encode()).encode()


def data(channel: int, payload: bytes) -> list[bytes]:
    """stdin/stdout/stderr bytes as frames of at most MAX_FRAME bytes each."""
    return [
        Frame(channel, payload[i : i + MAX_FRAME]).encode()
        for i in range(0, len(payload), MAX_FRAME)
    ]


def exit_frame(code: int, error: str = "") -> bytes:
    return _json(EXIT, {"code": code, "error": error} if error else {"code": code})


def resize_frame(cols: int, rows: int) -> bytes:
    return _json(RESIZE, {"cols": cols, "rows": rows})


def signal_frame(name: str) -> bytes:
    return Frame(SIGNAL, name.encode()).encode()


def error_frame(message: str) -> bytes:
    return _json(ERROR, {"message": message})


def size_of(frame: Frame) -> tuple[int, int]:
    """(cols, rows) of a resize frame; BadFrame unless both are 1..10000."""
    value = frame.json()
    return _dimension(value.get("cols")), _dimension(value.get("rows"))


def _dimension(n: object) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10000:
        raise BadFrame("resize needs cols and rows, 1-10000")
    return n


def signal_of(frame: Frame) -> str:
    """The signal name of a signal frame; BadFrame for one Berth does not forward."""
    name = frame.data.decode("ascii", "replace")
    if name not in SIGNALS:
        raise BadFrame(f"signal {name[:20]!r} is not one of {', '.join(sorted(SIGNALS))}")
    return name


def exit_of(frame: Frame) -> tuple[int, str]:
    value = frame.json()
    code = value.get("code")
    if not isinstance(code, int) or isinstance(code, bool):
        raise BadFrame("exit needs an integer code")
    error = value.get("error", "")
    return code, error if isinstance(error, str) else ""
