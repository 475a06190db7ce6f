"""TCP routes without a running Berth: validation, the route table, the HAProxy text, the bind
probe, and the CLI's own refusals. The end-to-end test is tests/integration/test_router_tcp.py."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from berth.cli.main import cli as cli_main
from berth.framework.errors import Invalid
from berth.framework.model import (
    Task,
    TcpRoute,
    validate_process_type,
    validate_proxy_protocol,
    validate_route_port,
)
from berth.framework.supervisor import component_args
from berth.router.haproxy import (
    RouterConfig,
    render,
    render_maps,
    server_options,
    validate,
    write_pages,
)
from berth.router.main import bind_error
from berth.router.table import EMPTY, Server, build, diff
from tests.conftest import need

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


def task(
    process: str,
    n: int,
    state: str = "running",
    healthy: bool | None = None,
    app: str = "shop",
    port: int = 0,
) -> Task:
    return Task(
        id=f"{app}.{process}.{n}.v1.{n:032x}",
        app=app,
        process=process,
        index=n,
        release=1,
        state=state,
        hostname="10.0.0.1",
        port=port or 31000 + n,
        healthy=healthy,
    )


def route(port: int, process: str = "db", proxy: str | None = None, app: str = "shop") -> TcpRoute:
    return TcpRoute(port=port, app=app, process=process, proxy_protocol=proxy, created_at="t")


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("port", [1024, 5432, 65535, "5432"])
def test_route_ports_in_range_are_taken(port: object) -> None:
    assert validate_route_port(port) == int(str(port))


@pytest.mark.parametrize(
    ("port", "message"),
    [
        (80, "out of range"),
        (1023, "out of range"),
        (65536, "out of range"),
        (0, "out of range"),
        (-5, "out of range"),
        ("http", "whole number"),
        ("5432 ", "whole number"),
        ("٥٤٣٢", "whole number"),  # Arabic-Indic digits: str.isdigit says yes
        (5432.0, "whole number"),
        (True, "whole number"),
        (None, "whole number"),
    ],
)
def test_bad_route_ports_are_refused_with_the_reason(port: object, message: str) -> None:
    with pytest.raises(Invalid, match=message):
        validate_route_port(port)


def test_process_types_and_proxy_protocols_are_checked() -> None:
    assert validate_process_type("db", {}) == "db"  # before any deploy, any valid name
    assert validate_process_type("db", {"web": "x", "db": "y"}) == "db"
    with pytest.raises(Invalid, match=r"no process type 'worker'.*it has: db, web"):
        validate_process_type("worker", {"web": "x", "db": "y"})
    for bad in ("DB", "1db", "", "d b", "x" * 31, 5):
        with pytest.raises(Invalid, match="invalid process type"):
            validate_process_type(bad, {})
    assert validate_proxy_protocol(None) is None
    assert validate_proxy_protocol("") is None
    assert validate_proxy_protocol("v1") == "v1"
    assert validate_proxy_protocol("v2") == "v2"
    for bad in ("v3", "V1", "1", 2, True):
        with pytest.raises(Invalid, match="v1 or v2"):
            validate_proxy_protocol(bad)


def test_a_route_as_json() -> None:
    assert route(5432, proxy="v2").to_json() == {
        "id": "tcp:5432",
        "type": "tcp",
        "port": 5432,
        "app": "shop",
        "process": "db",
        "proxy_protocol": "v2",
        "created_at": "t",
    }


# -- the table --------------------------------------------------------------------------------


def test_a_listener_serves_the_route_s_process_like_web_tasks() -> None:
    tasks = [
        task("db", 1),  # no check reported: serving
        task("db", 2, healthy=True),
        task("db", 3, healthy=False),  # unhealthy: out
        task("db", 4, state="killing"),  # draining
        task("db", 5, state="starting"),  # not yet
        task("web", 1),  # another process type
        task("db", 6, app="blog"),  # another app's db
    ]
    table = build(["shop", "blog"], tasks, {}, "example.com", [route(5432, proxy="v1")])
    listener = table.listeners[5432]
    assert (listener.name, listener.app, listener.process) == ("tcp_5432", "shop", "db")
    assert [(s.task_id.split(".")[2], s.draining) for s in listener.servers] == [
        ("1", False),
        ("2", False),
        ("4", True),
    ]
    assert {s.send_proxy for s in listener.servers} == {"v1"}
    # the web backend is untouched by the route: its servers have no PROXY header
    assert [s.send_proxy for s in table.backends["shop"].servers] == [None]


def test_routes_of_unknown_apps_are_ignored() -> None:
    table = build(["shop"], [], {}, "example.com", [route(5432, app="gone")])
    assert table.listeners == {}
    assert EMPTY.listeners == {}


def test_a_route_added_removed_or_changed_is_structural() -> None:
    tasks = [task("db", 1)]
    before = build(["shop"], tasks, {}, "example.com", [route(5432)])
    assert not diff(before, before).structural
    assert diff(before, before).empty
    assert diff(before, build(["shop"], tasks, {}, "example.com", [])).structural
    assert diff(
        before, build(["shop"], tasks, {}, "example.com", [route(5432, "db", "v2")])
    ).structural
    assert diff(before, build(["shop"], tasks, {}, "example.com", [route(5433)])).structural
    assert diff(build(["shop"], tasks, {}, "example.com", []), before).structural


def test_a_listener_s_servers_change_at_run_time() -> None:
    old = build(["shop"], [task("db", 1), task("db", 2)], {}, "x.com", [route(5432, proxy="v2")])
    new = build(
        ["shop"],
        [task("db", 2, state="killing"), task("db", 3)],
        {},
        "x.com",
        [route(5432, proxy="v2")],
    )
    changes = diff(old, new)
    assert not changes.structural
    [(backend, added)] = changes.add
    assert (backend, added.task_id, added.send_proxy) == ("tcp_5432", task("db", 3).id, "v2")
    assert changes.remove == (("tcp_5432", task("db", 1).id),)
    assert changes.drain == (("tcp_5432", task("db", 2).id),)
    moved = build(
        ["shop"],
        [task("db", 1, port=40000), task("db", 2)],
        {},
        "x.com",
        [route(5432, proxy="v2")],
    )
    changes = diff(old, moved)
    assert changes.remove == (("tcp_5432", task("db", 1).id),)
    assert [(b, s.port) for b, s in changes.add] == [("tcp_5432", 40000)]


# -- rendering --------------------------------------------------------------------------------


def test_servers_send_the_route_s_proxy_header_in_config_and_at_run_time() -> None:
    def options(proxy: str | None) -> str:
        server = Server(name="s", address="10.0.0.1", port=1, task_id="t", send_proxy=proxy)
        return server_options(server)

    assert "send-proxy" not in options(None)
    assert options("v1").endswith(" weight 100 send-proxy")
    assert options("v2").endswith(" weight 100 send-proxy-v2")


def sections(text: str) -> dict[str, list[str]]:
    return {s.splitlines()[0]: s.splitlines()[1:] for s in text.split("\n\n") if s.strip()}


def test_tcp_routes_render_as_listen_sections_after_their_own_defaults(tmp_path: Path) -> None:
    table = build(["shop"], [task("db", 1)], {}, "x.com", [route(6000, proxy="v2"), route(5432)])
    text = render(table, RouterConfig(http_addr="127.0.0.1:8080", run_dir=tmp_path))
    found = sections(text)
    headers = list(found)
    # every section after a defaults section inherits it: the TCP ones come last
    assert headers[-3:] == ["defaults tcp", "listen tcp_5432", "listen tcp_6000"]
    assert "    mode tcp" in found["defaults tcp"]
    assert found["listen tcp_6000"][0] == "    bind 127.0.0.1:6000"
    [server] = [x for x in found["listen tcp_6000"] if x.startswith("    server ")]
    assert server.endswith(" send-proxy-v2")
    assert not any("send-proxy" in x for x in found["listen tcp_5432"])
    assert "accept-proxy" not in text
    # no route, no TCP section at all
    assert "defaults tcp" not in render(
        build(["shop"], [], {}, "x.com"), RouterConfig(http_addr="127.0.0.1:8080", run_dir=tmp_path)
    )


def test_accept_proxy_and_the_tcp_address(tmp_path: Path) -> None:
    table = build(["shop"], [task("db", 1)], {}, "x.com", [route(5432)])
    config = RouterConfig(
        http_addr="0.0.0.0:80", run_dir=tmp_path, accept_proxy=True, tcp_host="10.1.2.3"
    )
    found = sections(render(table, config))
    assert found["frontend http"][0] == "    bind 0.0.0.0:80 accept-proxy"
    assert found["listen tcp_5432"][0] == "    bind 10.1.2.3:5432 accept-proxy"
    v6 = RouterConfig(http_addr="[::]:80", run_dir=tmp_path)
    assert v6.tcp_bind(5432) == "[::]:5432 v4v6"
    assert RouterConfig(http_addr=":80", run_dir=tmp_path).tcp_bind(5432) == ":5432"
    assert RouterConfig(http_addr=":80", run_dir=tmp_path, tcp_host="::1").tcp_bind(9) == "[::1]:9"
    for bad in ("a b", "10.0.0.1:80", "[::1]", "x;y"):
        with pytest.raises(Invalid):
            RouterConfig(http_addr=":80", run_dir=tmp_path, tcp_host=bad)


@pytest.mark.haproxy
def test_haproxy_accepts_tcp_routes_and_accept_proxy_without_a_warning(tmp_path: Path) -> None:
    need(HAPROXY is not None, "HAProxy (Debian package haproxy)")
    assert HAPROXY is not None
    table = build(
        ["shop"],
        [task("db", 1), task("db", 2, state="killing")],
        {},
        "x.com",
        [route(5432), route(5433, proxy="v1"), route(5434, proxy="v2")],
    )
    config = RouterConfig(http_addr="127.0.0.1:8080", run_dir=tmp_path, accept_proxy=True)
    write_pages(config)
    for name, text in render_maps(table).items():
        (tmp_path / name).write_text(text)
    config.config_path.write_text(render(table, config))
    validate(config.config_path, HAPROXY, strict=True)


# -- the router's bind probe, berth server, the CLI ---------------------------------------------


def test_bind_error_says_why_a_port_cannot_be_had() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        why = bind_error("127.0.0.1", port)
        assert why is not None
        assert f"cannot bind port {port}" in why
    assert bind_error("127.0.0.1", port) is None  # free again
    assert bind_error("no-such-host.invalid", port) is not None


def test_berth_server_passes_accept_proxy_to_the_router() -> None:
    assert "--accept-proxy" in component_args("router", "local", ":80", accept_proxy=True)
    assert "--accept-proxy" not in component_args("router", "local", ":80")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["routes:add", "http", "--port", "5432", "--process", "db"], "domains:add"),
        (["routes:add", "udp", "--port", "5432", "--process", "db"], "route type is tcp"),
        (["routes:add", "tcp", "--process", "db"], "Missing option '--port'"),
        (
            ["routes:add", "tcp", "--port", "5432", "--process", "db", "--proxy-protocol", "v3"],
            "v3",
        ),
        (["routes:remove", "tcp"], "give --port"),
        (["routes:remove", "tcp:54x2"], "not a TCP route id"),
        (["routes:remove", "tcp:5432", "--port", "5432"], "not both"),
    ],
)
def test_the_cli_refuses_bad_routes_before_asking_the_api(
    argv: list[str], message: str, tmp_path: Path
) -> None:
    env = {"BERTH_URL": "http://127.0.0.1:9", "BERTH_TOKEN": "x", "XDG_CONFIG_HOME": str(tmp_path)}
    result = CliRunner().invoke(cli_main, [*argv, "-a", "shop"], env=env)
    assert result.exit_code == 2, result.output
    assert message in result.output
