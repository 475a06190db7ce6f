"""run: a one-off process in the app's environment (its current release and config), like
`heroku run`: attached to this terminal by default — a real TTY when stdin is one (raw mode,
window size and resizes forwarded; Ctrl-C is just a byte), plain pipes otherwise (stdin copied
until EOF, stdout and stderr kept apart, SIGINT/SIGTERM forwarded) — and the remote exit code
becomes this command's. `--detach` only starts it: its output goes to the app's logs as
`run.N`, and `ps` / `ps:stop run.N` see and end it.

Speaks `POST /v1/apps/<app>/runs`, then the websocket `…/runs/<n>/attach` (cli/attachwire.py
frames), with the same token as every other command."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import termios
import threading
import tty as ttymod
from collections.abc import Iterator
from types import FrameType
from typing import Any

import click

from berth.cli import attachwire as wire
from berth.cli.client import ApiError, Client, load_credentials
from berth.cli.common import app_option, resolve_app

LOST = 255  # the exit code when the connection ends without the run's


@click.command(
    "run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@app_option
@click.option("-d", "--detach", is_flag=True, help="Start it and return; output goes to logs")
@click.option("--memory", metavar="SIZE", help="Memory limit, like 512m or 1g [default: 256m]")
@click.option("--cpu", metavar="CPUS", help="CPU share, like 0.5 [default: 0.25]")
@click.option(
    "--tty/--no-tty",
    "want_tty",
    default=None,
    help="A TTY for the process [default: when stdin and stdout are terminals]",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    app: str | None,
    detach: bool,
    memory: str | None,
    cpu: str | None,
    want_tty: bool | None,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND once in the app's environment: `berth run -a APP -- CMD ARGS…`.

    Arguments arrive as given (no shell): use `-- sh -c '…'` for shell syntax."""
    name = resolve_app(app)
    creds = load_credentials()
    size: dict[str, Any] = {}
    if memory:
        size["memory"] = memory
    if cpu:
        size["cpu"] = cpu
    use_tty = (
        not detach and sys.stdin.isatty() and sys.stdout.isatty()
        if want_tty is None
        else want_tty and not detach
    )
    body = {"command": list(command), "attach": not detach, "tty": use_tty, "size": size}
    created = Client(creds).call("POST", f"/v1/apps/{name}/runs", body)
    number = created["number"]
    if detach:
        click.echo(f"run.{number}")
        click.echo(
            f"Started run.{number} of {name} (v{created['release']}): "
            f"`berth logs -a {name} --ps run.{number}`, `berth ps:stop -a {name} run.{number}`",
            err=True,
        )
        return
    url = creds.url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    code = _attached(f"{url}/v1/apps/{name}/runs/{number}/attach", creds.token, use_tty)
    sys.exit(code)


def _attached(url: str, token: str, use_tty: bool) -> int:
    import simple_websocket  # type: ignore[import-untyped]

    try:
        ws = simple_websocket.Client.connect(
            url,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "berth-cli"},
            max_message_size=wire.MAX_FRAME + 1,
            thread_class=_daemon_thread,  # its reader never keeps the CLI from exiting
        )
    except (OSError, simple_websocket.ConnectionError) as e:
        raise ApiError(f"cannot attach to the run: {e}") from None
    session = _Session(ws)
    with _terminal(use_tty), session.signals(use_tty):
        if use_tty:
            session.resize()
        threading.Thread(target=session.copy_stdin, name="stdin", daemon=True).start()
        return session.copy_output()


def _daemon_thread(**kwargs: Any) -> threading.Thread:
    return threading.Thread(daemon=True, **kwargs)


class _Session:
    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._lock = threading.Lock()

    def send(self, message: bytes) -> None:
        with self._lock, contextlib.suppress(Exception):  # gone: copy_output says why
            self._ws.send(message)

    def resize(self) -> None:
        size = shutil.get_terminal_size()
        self.send(wire.control(wire.RESIZE, {"cols": size.columns, "rows": size.lines}))

    def copy_stdin(self) -> None:
        fd = sys.stdin.fileno()
        while True:
            try:
                data = os.read(fd, 32 * 1024)
            except OSError:
                data = b""
            if not data:
                self.send(wire.control(wire.STDIN_EOF))
                return
            for frame in wire.data(wire.STDIN, data):
                self.send(frame)

    def copy_output(self) -> int:
        """Output to stdout/stderr until the exit frame; the run's exit code."""
        import simple_websocket

        while True:
            try:
                message = self._ws.receive(timeout=1.0)
            except simple_websocket.ConnectionClosed:
                break
            if message is None:
                if self._ws.connected:
                    continue
                break
            channel, payload = wire.split(message)
            if channel == wire.STDOUT:
                _write(1, payload)
            elif channel == wire.STDERR:
                _write(2, payload)
            elif channel == wire.EXIT:
                value = wire.json_of(payload)
                if value.get("error"):
                    _write(2, f"berth: {value['error']}\r\n".encode())
                code = value.get("code")
                self._close()
                return code if isinstance(code, int) and 0 <= code <= 255 else LOST
            elif channel == wire.ERROR:
                message_text = wire.json_of(payload).get("message", "the run ended")
                _write(2, f"berth: {message_text}\r\n".encode())
                self._close()
                return 1
        _write(2, b"berth: the connection to the run was lost\r\n")
        return LOST

    def _close(self) -> None:
        with self._lock, contextlib.suppress(Exception):
            self._ws.close()

    @contextlib.contextmanager
    def signals(self, use_tty: bool) -> Iterator[None]:
        """Forward SIGINT/SIGTERM (SIGTERM only with a TTY: there ^C is a byte), SIGWINCH."""

        def forward(signum: int, frame: FrameType | None) -> None:
            name = signal.Signals(signum).name.removeprefix("SIG")
            self.send(wire.control(wire.SIGNAL, text=name))

        def winch(signum: int, frame: FrameType | None) -> None:
            self.resize()

        wanted: dict[int, Any] = {signal.SIGTERM: forward, signal.SIGHUP: forward}
        if use_tty:
            wanted[signal.SIGWINCH] = winch
        else:
            wanted[signal.SIGINT] = forward
        previous = {sig: signal.signal(sig, handler) for sig, handler in wanted.items()}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            continue
        except OSError:
            return  # our reader went away
        view = view[written:]


@contextlib.contextmanager
def _terminal(use_tty: bool) -> Iterator[None]:
    """Raw mode on stdin while attached with a TTY; the terminal restored however it ends."""
    if not use_tty or not os.isatty(sys.stdin.fileno()):
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        ttymod.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
