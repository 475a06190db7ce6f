"""An attached one-off run's side of the rendezvous (docs/architecture.md "One-off runs"):
the executor dials the API's websocket with the run's secret and bridges it to the
container's attach stream, in framework/attach.py's frames.

    container stdout/stderr ──"attach-out"──▶ STDOUT/STDERR frames ──▶ API ──▶ `berth run`
    container stdin, TTY size, signals ◀──"attach-in"── STDIN/RESIZE/SIGNAL/STDIN_EOF frames

The websocket is dialled (retried for DIAL_SECONDS) after the container is created and
attached but before it starts, so no output is missed. When the websocket closes before the
container has ended — the client went away, or none came within the API's pairing time —
`on_gone` is called (the executor stops the container: no orphans). `finish(code)` sends
the exit frame once the container's output has been read to its end.

simple_websocket (and its wsproto) is imported only here, and only by executors of attached
runs.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from berth.executor.containers import ContainerError, Containers, frames
from berth.framework import attach

log = logging.getLogger(__name__)

DIAL_SECONDS = 30.0
DRAIN_SECONDS = 5.0  # after the container ended, for its last output to be sent
READ_SIZE = 32 * 1024


class RendezvousFailed(ContainerError):
    """The API's rendezvous could not be reached."""


def _ws_url(url: str) -> str:
    if url.startswith("https://"):
        return "wss://" + url.removeprefix("https://")
    if url.startswith("http://"):
        return "ws://" + url.removeprefix("http://")
    return url


def _daemon_thread(**kwargs: Any) -> threading.Thread:
    return threading.Thread(daemon=True, **kwargs)


class Bridge:
    def __init__(
        self,
        containers: Containers,
        url: str,
        secret: str,
        tty: bool,
        on_gone: Callable[[], None],
        task_id: str,
    ) -> None:
        self._containers = containers
        self._url = url
        self._secret = secret
        self._tty = tty
        self._on_gone = on_gone
        self._task_id = task_id
        self._ws: Any = None
        self._sock: socket.socket | None = None
        self._container_id = ""
        self._send_lock = threading.Lock()
        self._out_done = threading.Event()
        self._ended = threading.Event()  # the container ended: a closing websocket is expected

    def connect(self, container_id: str) -> None:
        """Attach to the created container, then dial the API; start the pumps. Raises
        ContainerError (the container is removed by the caller)."""
        import simple_websocket  # type: ignore[import-untyped]

        self._container_id = container_id
        self._sock = self._containers.attach(container_id)
        deadline = time.monotonic() + DIAL_SECONDS
        last = ""
        while True:
            try:
                self._ws = simple_websocket.Client.connect(
                    _ws_url(self._url),
                    headers={"Authorization": f"Bearer {self._secret}"},
                    max_message_size=attach.MAX_FRAME + 1,
                    thread_class=_daemon_thread,  # never keeps the executor from exiting
                )
                break
            except (OSError, simple_websocket.ConnectionError) as e:
                last = str(e) or type(e).__name__
            if time.monotonic() > deadline:
                self._sock.close()
                raise RendezvousFailed(f"could not reach the API's rendezvous: {last}")
            time.sleep(1.0)
        log.info("attached to the rendezvous", extra={"task_id": self._task_id})
        threading.Thread(target=self._outbound, name="attach-out", daemon=True).start()
        threading.Thread(target=self._inbound, name="attach-in", daemon=True).start()

    def _send(self, message: bytes) -> bool:
        try:
            with self._send_lock:
                self._ws.send(message)
        except Exception:  # the websocket is gone: _inbound notices and reports it
            return False
        return True

    def _outbound(self) -> None:
        """The container's output → frames, until the attach stream ends."""
        assert self._sock is not None
        sock = self._sock

        def chunks() -> Any:
            while True:
                try:
                    data = sock.recv(READ_SIZE)
                except OSError:
                    return
                if not data:
                    return
                yield data

        try:
            if self._tty:
                for data in chunks():
                    for frame in attach.data(attach.STDOUT, data):
                        self._send(frame)
            else:
                for stream, data in frames(chunks()):
                    channel = attach.STDERR if stream == "stderr" else attach.STDOUT
                    for frame in attach.data(channel, data):
                        self._send(frame)
        finally:
            self._out_done.set()

    def _inbound(self) -> None:
        """Frames from the client → the container, until the websocket closes."""
        assert self._sock is not None
        import simple_websocket

        while True:
            try:
                message = self._ws.receive()
            except simple_websocket.ConnectionClosed:
                break
            if message is None:
                if not self._ws.connected:
                    break
                continue
            try:
                frame = attach.decode(message)
                self._apply(frame)
            except attach.BadFrame as e:
                log.warning("ignoring a bad frame: %s", e, extra={"task_id": self._task_id})
            except ContainerError as e:
                log.warning("a frame failed: %s", e.message, extra={"task_id": self._task_id})
            except OSError:
                pass  # stdin closed already (the process exited)
        if not self._ended.is_set():
            log.info("the client went away: stopping the run", extra={"task_id": self._task_id})
            self._on_gone()

    def _apply(self, frame: attach.Frame) -> None:
        assert self._sock is not None
        if frame.channel == attach.STDIN:
            self._sock.sendall(frame.data)
        elif frame.channel == attach.STDIN_EOF:
            self._sock.shutdown(socket.SHUT_WR)
        elif frame.channel == attach.RESIZE:
            cols, rows = attach.size_of(frame)
            self._containers.resize(self._container_id, cols, rows)
        elif frame.channel == attach.SIGNAL:
            self._containers.kill(self._container_id, attach.signal_of(frame))
        else:
            raise attach.BadFrame(f"channel {frame.channel} does not go to the process")

    def finish(self, code: int, error: str = "") -> None:
        """The container ended (code): send its remaining output and the exit frame, close."""
        self._ended.set()
        self._out_done.wait(DRAIN_SECONDS)
        self._send(attach.exit_frame(code, error))
        try:
            with self._send_lock:
                self._ws.close()
        except Exception:  # closed by the other side already
            log.debug("the websocket was closed already")
        if self._sock is not None:
            self._sock.close()
