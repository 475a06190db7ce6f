"""The frames `berth run` speaks on its websocket: the CLI's copy of the wire format that
berth.framework.attach defines for the API and the executor (the CLI may not import the
framework; tests/unit/test_attach.py checks the two agree). One binary message is one frame:
a channel byte, then the payload."""

from __future__ import annotations

import json
from typing import Any

STDIN, STDOUT, STDERR, STDIN_EOF, RESIZE, SIGNAL, EXIT, ERROR = range(8)
MAX_FRAME = 64 * 1024


def data(channel: int, payload: bytes) -> list[bytes]:
    return [
        bytes([channel]) + payload[i : i + MAX_FRAME] for i in range(0, len(payload), MAX_FRAME)
    ]


def control(channel: int, value: dict[str, Any] | None = None, text: str = "") -> bytes:
    if value is not None:
        return bytes([channel]) + json.dumps(value, sort_keys=True).encode()
    return bytes([channel]) + text.encode()


def split(message: bytes | str) -> tuple[int, bytes]:
    """(channel, payload); (-1, b"") for a message that is not a frame."""
    if isinstance(message, str) or not message:
        return -1, b""
    return message[0], bytes(message[1:])


def json_of(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
