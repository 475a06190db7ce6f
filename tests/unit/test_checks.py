"""Health checks: what `checks:set` accepts (framework/checks.py) and how the executor's
HealthWatch gives up on a task whose first check never passes (executor/health.py)."""

from __future__ import annotations

import socket
import threading

import pytest

from berth.executor.health import HealthWatch, Policy, Probe
from berth.executor.main import ExecutorSettings
from berth.framework import checks
from berth.framework.errors import Invalid


def test_defaults_and_stored_checks() -> None:
    assert checks.effective({}, "web") == checks.Check("tcp", default=True)
    assert checks.effective({}, "worker") == checks.Check("none", default=True)
    assert checks.effective({}, "db", routed={"db"}) == checks.Check("tcp", default=True)
    stored = checks.validate_checks({"web": {"path": "/up?full=1", "startup": 90}}, {"web": "x"})
    assert stored == {"web": {"type": "http", "path": "/up?full=1", "startup": 90}}
    assert checks.effective(stored, "web") == checks.Check("http", "/up?full=1", 90)
    assert checks.validate_checks({"web": None}, {"web": "x"}) == {"web": None}
    assert checks.validate_checks({"web": {"type": "none"}}, {}) == {
        "web": {"type": "none", "startup": 60}
    }


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ([], "non-empty object"),
        ({"Web": {"path": "/"}}, "invalid process type"),
        ({"web": "/up"}, "takes type"),
        ({"web": {"path": "/\u00e9"}}, "printable ASCII"),
        ({"web": {"path": "/#frag"}}, "'#'"),
        ({"web": {"startup": 901}}, "1 to 900"),
        ({"web": {"startup": True, "type": "tcp"}}, "whole seconds"),
    ],
)
def test_bad_checks_are_refused(changes: object, words: str) -> None:
    with pytest.raises(Invalid) as caught:
        checks.validate_checks(changes, {"web": "serve"})
    assert words in caught.value.message


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_watch_gives_up_when_no_check_passes_in_time() -> None:
    """A fake clock jumps past the startup time after a few failed probes of a closed port."""
    now = [0.0]
    changes: list[tuple[bool, str]] = []
    never: list[str] = []
    probes = 0

    def clock() -> float:
        nonlocal probes
        probes += 1
        now[0] += 1.0
        return now[0]

    watch = HealthWatch(
        Probe("tcp", _closed_port(), timeout=0.5),
        Policy(startup_interval=0.01, startup=5),
        lambda healthy, detail: changes.append((healthy, detail)),
        threading.Event(),
        on_never=never.append,
        clock=clock,
    )
    watch.run()  # returns by itself: no stop event needed
    assert changes == []
    assert len(never) == 1
    assert never[0].startswith("no health check passed within 5 s (last: ")


def test_a_watch_that_passes_reports_healthy_and_never_gives_up() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        stop = threading.Event()
        changes: list[bool] = []
        never: list[str] = []

        def on_change(healthy: bool, detail: str) -> None:
            changes.append(healthy)
            stop.set()

        HealthWatch(
            Probe("tcp", int(server.getsockname()[1]), settle=0.01),
            Policy(startup_interval=0.01, startup=30),
            on_change,
            stop,
            on_never=never.append,
        ).run()
    assert changes == [True]
    assert never == []


def test_a_direct_tcp_probe_needs_a_listener_and_no_settling() -> None:
    """Aimed at a container's own address there is no docker-proxy: an accepted connection
    is a listener, even one that closes it at once (through the host port, where docker-proxy
    does exactly that when nothing listens, the same server reads as unhealthy)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = int(listener.getsockname()[1])

        def accept_and_close(times: int) -> None:
            for _ in range(times):
                conn, _ = listener.accept()
                conn.close()

        closer = threading.Thread(target=accept_and_close, args=(2,))
        closer.start()
        direct = Probe(kind="tcp", port=port, direct=True).check()
        proxied = Probe(kind="tcp", port=port).check()
        closer.join(5)
    assert direct.ok, direct.detail
    assert not proxied.ok
    assert "closed the connection at once" in proxied.detail
    failed = Probe(kind="tcp", port=_closed_port(), direct=True).check()
    assert not failed.ok
    assert "refused" in failed.detail.lower()


def test_executor_settings_read_the_cpu_quota_flag() -> None:
    assert ExecutorSettings.from_env({}).cpu_quota is False
    assert ExecutorSettings.from_env({"BERTH_EXECUTOR_CPU_QUOTA": "1"}).cpu_quota is True
    assert ExecutorSettings.from_env({"BERTH_EXECUTOR_CPU_QUOTA": "off"}).cpu_quota is False
    with pytest.raises(ValueError, match="BERTH_EXECUTOR_CPU_QUOTA='maybe' is not 1 or 0"):
        ExecutorSettings.from_env({"BERTH_EXECUTOR_CPU_QUOTA": "maybe"})
