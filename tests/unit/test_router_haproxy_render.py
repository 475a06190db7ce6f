"""The HAProxy configuration the router renders (golden files under tests/golden/), and the
other parts of berth.router.haproxy that need no running HAProxy. Tests marked `haproxy` run
`haproxy -c` on what is rendered.

To accept a deliberate change to the rendered text: BERTH_UPDATE_GOLDEN=1 pytest <this file>,
then review the diff of tests/golden/ like code."""

from __future__ import annotations

import difflib
import os
import shutil
from pathlib import Path

import pytest

from berth.framework.errors import Invalid
from berth.framework.model import Task, TcpRoute
from berth.router import pages
from berth.router.haproxy import (
    ConfigError,
    RouterConfig,
    Runtime,
    parse_show_proc,
    render,
    render_maps,
    server_options,
    validate,
    write_atomically,
    write_pages,
)
from berth.router.table import Routing, Table, build, diff
from tests.conftest import need

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
CONFIG = RouterConfig(http_addr="0.0.0.0:80", run_dir=Path("/run/berth/router"))


def golden_table(agent_3: str = "agent-3.cluster.internal") -> Table:
    def web(
        app: str, n: int, host: str, port: int, state: str = "running", process: str = "web"
    ) -> Task:
        return Task(
            id=f"{app}.{process}.{n}.v3.{n:032x}",
            app=app,
            process=process,
            index=n,
            release=3,
            state=state,
            hostname=host,
            port=port,
            healthy=True,
        )

    tasks = [
        web("blog", 1, "10.0.0.1", 31001),
        web("blog", 2, "10.0.0.2", 31002, state="killing"),  # draining
        web("shop", 1, agent_3, 31003),  # a host name, not an address
        web("shop", 2, "fd00::3", 31004),
        web("shop", 1, "10.0.0.1", 31005, process="db"),
        web("shop", 2, "10.0.0.2", 31006, state="killing", process="db"),  # draining
    ]
    tcp_routes = [  # TCP routes: no PROXY header, v1, v2 (to a process with no task)
        TcpRoute(port=5432, app="shop", process="db", proxy_protocol=None, created_at=""),
        TcpRoute(port=5433, app="shop", process="db", proxy_protocol="v1", created_at=""),
        TcpRoute(port=6379, app="blog", process="cache", proxy_protocol="v2", created_at=""),
    ]
    domains = {
        "www.blog.test": "blog",
        "*.blog.test": "blog",
        "*.eu.blog.test": "shop",
        "shop.test": "shop",
    }
    routing = {"blog": Routing(timeout=90, https_only=True)}  # no HTTPS here: no redirect
    return build(["blog", "shop", "idle"], tasks, domains, "apps.example.com", tcp_routes, routing)


def compare_with_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("BERTH_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    expected = path.read_text()
    if text != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                text.splitlines(keepends=True),
                f"tests/golden/{name} (expected)",
                f"{name} (rendered)",
            )
        )
        pytest.fail(
            f"the rendered {name} differs from tests/golden/{name}:\n{diff}\n"
            "If the change is intended: BERTH_UPDATE_GOLDEN=1 pytest " + __file__,
            pytrace=False,
        )


def test_the_config_matches_the_golden_file() -> None:
    compare_with_golden("haproxy.cfg", render(golden_table(), CONFIG))


def test_the_maps_match_the_golden_files() -> None:
    maps = render_maps(golden_table())
    assert set(maps) == {"hosts.map", "wildcards.map"}
    for name, text in maps.items():
        compare_with_golden(name, text)


def test_rendering_is_deterministic() -> None:
    table = golden_table()
    assert render(table, CONFIG) == render(golden_table(), CONFIG)
    shuffled = build(
        ["idle", "shop", "blog"],
        [],
        {"shop.test": "shop", "www.blog.test": "blog"},
        "apps.example.com",
    )
    ordered = build(
        ["blog", "idle", "shop"],
        [],
        {"www.blog.test": "blog", "shop.test": "shop"},
        "apps.example.com",
    )
    assert render(shuffled, CONFIG) == render(ordered, CONFIG)
    assert render_maps(shuffled) == render_maps(ordered)


def test_every_server_line_has_the_options_add_server_sends() -> None:
    """HAProxy gives servers added at run time no default-server options, so the rendered
    lines spell out exactly what `Runtime.add_server` sends."""
    table = golden_table()
    text = render(table, CONFIG)
    lines = text.splitlines()
    sections = {s.splitlines()[0]: s.splitlines() for s in text.split("\n\n") if s.strip()}
    proxies = [
        *((f"backend {b.name}", b.servers) for b in table.backends.values()),
        *((f"listen {x.name}", x.servers) for x in table.listeners.values()),
    ]
    for header, servers in proxies:
        for server in servers:
            section = sections[header]
            [line] = [x for x in section if x.startswith(f"    server {server.name} ")]
            assert f" {server_options(server)}" in line
            assert line.split(" weight ")[1].split()[0] == ("0" if server.draining else "100")
    assert "default-server" not in "\n".join(lines)


def test_an_app_without_servers_still_has_its_backend() -> None:
    text = render(golden_table(), CONFIG)
    assert "\nbackend app_idle\n    balance roundrobin\n" in text
    assert "idle.apps.example.com app_idle\n" in render_maps(golden_table())["hosts.map"]


def test_the_bind_address_forms() -> None:
    def bind(addr: str) -> str:
        return RouterConfig(http_addr=addr, run_dir=Path("/r")).bind

    assert bind("127.0.0.1:8080") == "127.0.0.1:8080"
    assert bind(":80") == ":80"
    assert bind("[::]:80") == "[::]:80 v4v6"
    assert bind("[::1]:8080") == "[::1]:8080"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("http_addr", "80"),
        ("http_addr", "127.0.0.1:0"),
        ("http_addr", "127.0.0.1:70000"),
        ("http_addr", "[nonsense]:80"),
        ("http_addr", "host name:80"),
        ("run_dir", Path("/tmp/with space")),
        ("run_dir", Path("/tmp/" + "d" * 120)),
        ("timeout_server", 0),
        ("max_header_bytes", 100_000),
    ],
)
def test_router_config_refuses_what_haproxy_could_not_take(field: str, value: object) -> None:
    values: dict[str, object] = {"http_addr": "127.0.0.1:8080", "run_dir": Path("/r")}
    values[field] = value
    with pytest.raises(Invalid, match=r"\w"):
        RouterConfig(**values)  # type: ignore[arg-type]


def test_the_run_dir_is_made_absolute() -> None:
    config = RouterConfig(http_addr=":80", run_dir=Path("relative/run"))
    assert config.run_dir.is_absolute()
    assert config.hosts_map == config.run_dir / "hosts.map"


@pytest.mark.parametrize(
    "line", ["show info; shutdown sessions", "show info\nshutdown sessions", "show\rinfo"]
)
def test_the_runtime_api_sends_one_command_at_a_time(line: str) -> None:
    with pytest.raises(ValueError, match="one command"):
        Runtime(Path("/nonexistent/admin.sock")).command(line)


def test_values_cannot_smuggle_words_into_a_command() -> None:
    runtime = Runtime(Path("/nonexistent/admin.sock"))
    for key in ("evil.test app_x", "a;b", "", "a\\ b", "#1"):
        with pytest.raises(ValueError, match="cannot be passed"):
            runtime.set_map(Path("/r/hosts.map"), key, "app_blog")
    with pytest.raises(ValueError, match="cannot be passed"):
        runtime.drain("app_blog", "s1 state ready")


def test_dropped_logs_add_haproxy_s_own_and_the_access_ring_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = {
        "show info": "Name: HAProxy\nDroppedLogs: 3\nBusyPolling: 0",
        "show events": (
            "Supported events sinks are listed below. Add -w(wait), -n(new). Any key to stop\n"
            "    stdout     : type=fd, 0 dropped, standard output (fd#1)\n"
            "    buf0       : type=buffer, 7 dropped, in-memory ring buffer\n"
            "    berth_access : type=buffer, 75149 dropped, berth_access"
        ),
    }
    runtime = Runtime(Path("/nonexistent/admin.sock"))
    monkeypatch.setattr(runtime, "command", answers.__getitem__)
    assert runtime.dropped_logs() == 3 + 75149  # not another ring's


def test_show_proc_is_parsed() -> None:
    text = (
        "#<PID>          <type>          <reloads>       <uptime>        <version>\n"
        "1162            master          5 [failed: 1]   0d00h02m07s     2.6.12\n"
        "# workers\n"
        "1271            worker          1               0d00h00m00s     2.6.12\n"
        "# old workers\n"
        "1233            worker          3               0d00h00m43s     2.6.12\n"
        "# programs\n"
        "1244            foo             0               0d00h00m00s     -\n"
    )
    procs = parse_show_proc(text)
    assert (procs.master, procs.reloads, procs.failed_reloads) == (1162, 5, 1)
    assert (procs.workers, procs.old_workers) == ((1271,), (1233,))


def test_pages_are_whole_http_responses() -> None:
    for page in pages.pages(timeout_server=30):
        data = pages.response(page)
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        assert lines[0] == f"HTTP/1.1 {page.status} {page.reason}".encode()
        assert f"Content-Length: {len(body)}".encode() in lines
        assert b"\n" not in head.replace(b"\r\n", b"")
        assert page.title.encode() in body


def test_write_pages_and_write_atomically(tmp_path: Path) -> None:
    config = RouterConfig(http_addr=":80", run_dir=tmp_path)
    write_pages(config)
    assert sorted(p.name for p in config.pages_dir.iterdir()) == [
        f"{page.status}.http" for page in pages.pages(30)
    ]
    assert b"within 30 seconds" in config.page(504).read_bytes()
    target = tmp_path / "x" / "file"
    write_atomically(target, "one")
    write_atomically(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file"]  # no temporary left


# -- with the haproxy binary ------------------------------------------------------------------


@pytest.fixture
def haproxy_binary() -> str:
    need(HAPROXY is not None, "HAProxy (Debian package haproxy)")
    assert HAPROXY is not None
    return HAPROXY


def write_all(table: Table, config: RouterConfig) -> None:
    write_pages(config, table)
    for name, text in render_maps(table).items():
        write_atomically(config.run_dir / name, text)
    write_atomically(config.config_path, render(table, config))


@pytest.mark.haproxy
@pytest.mark.parametrize("which", ["golden", "empty"])
def test_haproxy_accepts_the_rendered_config(
    which: str, haproxy_binary: str, tmp_path: Path
) -> None:
    table = golden_table("localhost") if which == "golden" else build([], [], {}, "example.com")
    config = RouterConfig(http_addr="127.0.0.1:8080", run_dir=tmp_path)
    write_all(table, config)
    validate(config.config_path, haproxy_binary, strict=True)  # not even a warning


@pytest.mark.haproxy
def test_a_server_host_name_that_does_not_resolve_does_not_fail_the_config(
    haproxy_binary: str, tmp_path: Path
) -> None:
    config = RouterConfig(http_addr="127.0.0.1:8080", run_dir=tmp_path)
    write_all(golden_table("no-such-agent.invalid"), config)
    validate(config.config_path, haproxy_binary)  # that server starts in maintenance
    with pytest.raises(ConfigError, match="could not resolve"):
        validate(config.config_path, haproxy_binary, strict=True)


@pytest.mark.haproxy
def test_validate_reports_haproxy_s_words(haproxy_binary: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.cfg"
    broken.write_text("defaults\n    mode http\n    timeout nonsense 5s\n")
    with pytest.raises(ConfigError, match="timeout") as caught:
        validate(broken, haproxy_binary)
    assert str(broken) in caught.value.message
    with pytest.raises(ConfigError, match="could not run"):
        validate(broken, str(tmp_path / "no-haproxy-here"))


@pytest.mark.parametrize(
    ("https_addr", "redirect"),
    [
        (None, None),
        ("0.0.0.0:443", "http-request redirect scheme https code 308 unless { ssl_fc }"),
        (
            "127.0.0.1:8443",
            "http-request redirect location https://%[var(txn.host)]:8443%[pathq]"
            " code 308 unless { ssl_fc }",
        ),
    ],
)
def test_an_app_s_routing_settings_are_its_backend_s(
    https_addr: str | None, redirect: str | None
) -> None:
    config = RouterConfig(http_addr="0.0.0.0:80", run_dir=Path("/run/b"), https_addr=https_addr)
    table = build(
        ["plain", "strict"],
        [],
        {},
        "example.com",
        routing={"strict": Routing(timeout=120, https_only=True)},
    )
    text = render(table, config)
    strict = text.split("backend app_strict\n")[1].split("\n\n")[0]
    plain = text.split("backend app_plain\n")[1].split("\n\n")[0]
    assert "    timeout server 120s" in strict.splitlines()
    assert "timeout" not in plain
    assert "redirect" not in plain
    if redirect is None:
        assert "redirect" not in strict
    else:
        assert f"    {redirect}" in strict.splitlines()


def test_changing_an_app_s_routing_settings_is_structural() -> None:
    before = build(["a"], [], {}, "example.com")
    after = build(["a"], [], {}, "example.com", routing={"a": Routing(timeout=5)})
    assert diff(before, after).structural
    assert not diff(after, after).structural
