"""HAProxy as the router's data plane: its configuration, its runtime API and its process.

Responsibility:

- `render` turns a route table (table.py) into a whole haproxy.cfg, and `render_maps` into the
  host maps it reads; both deterministic, so a golden file can pin the text. `write_pages`
  writes the error pages the config names; `write_atomically` and `validate` (`haproxy -c`)
  are how files reach disk.
- `Runtime` speaks HAProxy's runtime API on the admin socket: servers are added, drained and
  deleted, and map entries set, without a reload.
- `HAProxy` starts (master-worker mode, in a session of its own so that it outlives the
  controller, even a `kill -9` of it), adopts, reloads (seamlessly: listening sockets pass to
  the new worker) and stops the HAProxy process of one run directory.

How the pieces fit (the controller, main.py, decides when):

- Every server line carries its options explicitly (`server_options`), and `Runtime.add_server`
  sends exactly the same ones: HAProxy does not apply `default-server` to servers added at run
  time, and a server must behave the same whether it came from a reload or from the API.
- TCP routes are `listen tcp_<port>` sections in `mode tcp`, after a `defaults tcp` section of
  their own at the end of the file (every section after a `defaults` inherits it); their
  servers carry `send-proxy`/`send-proxy-v2` for a route with a PROXY protocol version, in the
  config and in `add server` alike (HAProxy 2.6 takes both at run time).
- With `accept_proxy`, every bind (HTTP and TCP routes) takes `accept-proxy`: an upstream load
  balancer's PROXY header says who the client is (%ci, X-Forwarded-For), and a connection
  without one is refused.
- A draining server is rendered with `weight 0`: after a reload it takes no new requests,
  and nothing has to be replayed through the API. At run time `Runtime.drain` sets the
  server's admin state to drain instead; `Runtime.ready` undoes either.
- `Runtime.remove_server` never cuts a request short: it puts the server in maintenance (no
  new requests; idle connections closed) and deletes it only once HAProxy says no connection
  is attached; otherwise it returns False, the server stays in maintenance, and the
  controller asks again later.
- Host names in a server address are resolved by the libc when HAProxy loads the config
  (`init-addr libc,none`: an unresolvable one starts in maintenance instead of failing the
  load), and by `Runtime.add_server` before it sends the address (HAProxy does not resolve
  addresses of servers added at run time).

Threads: nothing here starts a thread. `Runtime` and `HAProxy` are meant for one thread (the
controller's); `Runtime` opens one connection per command, so it holds no shared state.
Imports only the framework's errors and the router's own modules.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from berth.framework.errors import BerthError, Invalid
from berth.router import pages
from berth.router.table import Routing, Server, Table, wildcard_order

log = logging.getLogger(__name__)

HOSTS_MAP = "hosts.map"
WILDCARDS_MAP = "wildcards.map"
NOT_FOUND_BACKEND = "berth_not_found"
REQUEST_ID_MAX = 200
ACCESS_RING = "berth_access"  # the ring access lines go through (see _access_ring)
ACCESS_RING_BYTES = 4 << 20  # room for ~20,000 lines while the controller is away
WEIGHT = 100  # every serving server's weight; draining ones have 0
# HAProxy reads a request's headers into one buffer (tune.bufsize, 16 KiB by default) less
# the room it keeps for rewrites (tune.maxrewrite, 1 KiB): headers beyond that are a 400
# whatever `max_header_bytes` says.
HEADER_BYTES_LIMIT = 16384 - 1024 - 256
UNIX_PATH_MAX = 107  # sun_path is 108 bytes with its NUL

# The options of every server, in the config and in `add server` alike. Health: a TCP connect
# every 2 s (1 s while changing state), down after 3 failures, up after 2 successes; and
# passive ejection: 3 connection errors in a row on live traffic mark the server down (the
# check brings it back). Idle connections to a server are kept for reuse (keep-alive to the
# app) and closed after 10 s idle.
SERVER_OPTIONS = (
    "check inter 2s fastinter 1s downinter 2s rise 2 fall 3 "
    "observe layer4 error-limit 3 on-error mark-down "
    "pool-max-conn 64 pool-purge-delay 10s"
)

# Only these methods are retried after a request reached a server that then closed the
# connection without answering; any request is retried when the connection itself failed
# (nothing was sent, so nothing can have happened twice).
SAFE_METHODS = "GET HEAD OPTIONS"


class RouterError(BerthError):
    """Something the router could not do to HAProxy. The tree:

    RouterError
    ├── ConfigError        haproxy -c (or a reload) refused the configuration
    ├── RuntimeApiError    the runtime API answered with an error, or could not be reached
    └── ProcessError       HAProxy would not start, reload or stop in time
    """

    code = "router"


class ConfigError(RouterError):
    code = "haproxy_config"


class RuntimeApiError(RouterError):
    code = "haproxy_runtime_api"


class ProcessError(RouterError):
    code = "haproxy_process"


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Where and how HAProxy serves; every duration in whole seconds. Raises Invalid for a
    value HAProxy could not take."""

    http_addr: str  # "127.0.0.1:8080", "0.0.0.0:80", ":80" or "[::]:80"
    run_dir: Path  # socket, pid file, maps, error pages and haproxy.cfg live here
    timeout_server: int = 30  # no first byte from the app in this time → 504
    timeout_http_request: int = 10  # a client must send a whole request head in this time
    timeout_keep_alive: int = 55  # an idle client connection is closed after this
    timeout_connect: int = 5  # to connect to an app's process
    timeout_client: int = 60  # a client that neither sends nor reads for this long is cut
    hard_stop_after: int = 60  # an old worker still busy this long after a reload is stopped
    max_header_bytes: int = 8192  # request headers above this → 431
    maxconn: int = 4096  # concurrent client connections (HAProxy needs twice as many fds)
    tcp_host: str | None = None  # TCP routes bind here; None: http_addr's host
    accept_proxy: bool = False  # every bind expects a PROXY protocol header (v1 or v2)
    timeout_tcp: int = 3600  # a TCP route's connection idle this long (both ways) is closed
    access_log: bool = True  # HAProxy streams access lines to `access_socket`
    https_addr: str | None = None  # HTTPS (TLS by SNI, HTTP/2) on this address; None: none

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir", Path(os.path.abspath(self.run_dir)))
        _parse_addr(self.http_addr)
        if self.https_addr is not None:
            _parse_addr(self.https_addr)
            if self.https_addr == self.http_addr:
                raise Invalid("https_addr and http_addr must differ")
        if self.tcp_host is not None:
            _parse_addr(f"[{self.tcp_host}]:1" if ":" in self.tcp_host else f"{self.tcp_host}:1")
        for name in (
            "timeout_server",
            "timeout_http_request",
            "timeout_keep_alive",
            "timeout_connect",
            "timeout_client",
            "hard_stop_after",
            "timeout_tcp",
        ):
            value = getattr(self, name)
            if not 1 <= value <= 86400:
                raise Invalid(f"{name} must be 1 to 86400 seconds, not {value}")
        if not 1024 <= self.max_header_bytes <= HEADER_BYTES_LIMIT:
            raise Invalid(f"max_header_bytes must be 1024 to {HEADER_BYTES_LIMIT}")
        if not 1 <= self.maxconn <= 1_000_000:
            raise Invalid("maxconn must be 1 to 1000000")
        for path in (self.admin_socket, self.master_socket, self.access_socket):
            if len(str(path)) > UNIX_PATH_MAX:
                raise Invalid(f"run_dir is too long for a unix socket path: {path}")
        if any(c.isspace() or c in "\"'\\#;," for c in str(self.run_dir)):
            raise Invalid(f"run_dir must not hold spaces, quotes, '#', ';' or ',': {self.run_dir}")

    @property
    def config_path(self) -> Path:
        return self.run_dir / "haproxy.cfg"

    @property
    def access_socket(self) -> Path:
        """Where HAProxy's access ring connects to send its lines (a stream socket the
        controller listens on: router/accesslog.py)."""
        return self.run_dir / "access.sock"

    @property
    def admin_socket(self) -> Path:
        return self.run_dir / "admin.sock"

    @property
    def master_socket(self) -> Path:
        return self.run_dir / "master.sock"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "haproxy.pid"

    @property
    def hosts_map(self) -> Path:
        return self.run_dir / HOSTS_MAP

    @property
    def wildcards_map(self) -> Path:
        return self.run_dir / WILDCARDS_MAP

    @property
    def pages_dir(self) -> Path:
        return self.run_dir / "pages"

    def page(self, status: int) -> Path:
        return self.pages_dir / f"{status}.http"

    def timeout_page(self, seconds: int) -> Path:
        """The 504 page of an app with its own timeout (it names that timeout)."""
        return self.pages_dir / f"504-{int(seconds)}s.http"

    @property
    def bind(self) -> str:
        """The address as HAProxy's `bind` takes it."""
        host, port = _parse_addr(self.http_addr)
        if ":" in host:
            return f"[{host}]:{port}" + (" v4v6" if host == "::" else "")
        return f"{host}:{port}"

    @property
    def https_bind(self) -> str:
        """The HTTPS address as HAProxy's `bind` takes it."""
        assert self.https_addr is not None
        host, port = _parse_addr(self.https_addr)
        if ":" in host:
            return f"[{host}]:{port}" + (" v4v6" if host == "::" else "")
        return f"{host}:{port}"

    @property
    def crt_list(self) -> Path:
        return self.run_dir / "certs.list"

    @property
    def acme_map(self) -> Path:
        return self.run_dir / "acme.map"

    @property
    def bind_options(self) -> str:
        """What every bind line adds after its address ("" or " accept-proxy")."""
        return " accept-proxy" if self.accept_proxy else ""

    @property
    def http_port(self) -> int:
        return _parse_addr(self.http_addr)[1]

    @property
    def tcp_bind_host(self) -> str:
        """The host TCP routes bind on ("" for every address, as in ":5432")."""
        return self.tcp_host if self.tcp_host is not None else _parse_addr(self.http_addr)[0]

    def tcp_bind(self, port: int) -> str:
        """A TCP route's address as HAProxy's `bind` takes it."""
        host = self.tcp_bind_host
        if ":" in host:
            return f"[{host}]:{port}" + (" v4v6" if host == "::" else "")
        return f"{host}:{port}"


def _parse_addr(addr: str) -> tuple[str, int]:
    match = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]*)):(\d{1,5})", addr)
    if match is None:
        raise Invalid(f"http_addr must be HOST:PORT or [IPv6]:PORT, not {addr!r}")
    host = match.group(1) or match.group(2) or ""
    port = int(match.group(3))
    if match.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise Invalid(f"http_addr: {exc}") from exc
    if not 1 <= port <= 65535:
        raise Invalid(f"port must be 1 to 65535 in {addr!r}")
    return host, port


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def server_options(server: Server) -> str:
    """The options of a server line, the same in the config and in `add server`."""
    proxy = {None: "", "v1": " send-proxy", "v2": " send-proxy-v2"}[server.send_proxy]
    return f"{SERVER_OPTIONS} weight {0 if server.draining else WEIGHT}{proxy}"


def _safe_token(value: str, what: str) -> str:
    """A value that goes into a config line or an API command as one word."""
    if not value or any(c.isspace() or c in "\"'\\#;{}" or ord(c) < 32 for c in value):
        raise ValueError(f"{what} {value!r} cannot be passed to HAProxy")
    return value


# -- the configuration ------------------------------------------------------------------------


def render(table: Table, config: RouterConfig) -> str:
    """The whole haproxy.cfg for `table`. Deterministic: same input, same text."""
    c = config
    page = c.page
    out: list[str] = [
        "# Written by `berth router`; every change to the route table rewrites it.",
        "",
        "global",
        "    master-worker",
        f"    stats socket {c.admin_socket} mode 600 level admin expose-fd listeners",
        "    stats timeout 30s",
        f"    hard-stop-after {c.hard_stop_after}s",
        f"    maxconn {c.maxconn}",
        # access lines: into a ring, whose own forwarder streams them to the controller
        *([f"    log ring@{ACCESS_RING} len 16384 format raw local0 info"] if c.access_log else []),
        *_access_ring(c),
        "",
        "defaults",
        "    mode http",
        "    log global",
        # one line per request: what the request was, what became of it, who served it
        # time (epoch µs), backend and server first: accesslog.py splits them off for the
        # record's time, app and task
        '    log-format "%[date(0,us)] %b %s request_id=%[var(txn.request_id)] client=%ci'
        " method=%HM host=%[var(txn.host)] path=%{+Q}HPO status=%ST bytes=%B duration_ms=%Ta"
        ' connect_ms=%Tc response_ms=%Tr termination=%tsc retries=%rc"',
        "    option dontlognull",
        "    option http-keep-alive",
        # a client's first request may use any idle connection to the app, not only its own
        # session's. `aggressive` (only connections that carried two requests) was not
        # enough: under `Connection: close` load most requests still opened a new connection
        # to the app (a connect per request, 0.58x nginx's req/s; with `always` 0.92x,
        # measured). The risk HAProxy's manual names, an app closing an idle connection just
        # as a request is sent on it, is the race every reuse of an idle connection has
        # (`aggressive` too): a safe request is retried (retry-on below), another gets a 502
        "    http-reuse always",
        # a reload must not close a client's idle keep-alive connection under its next request
        "    option idle-close-on-response",
        # a request whose connection failed is retried on another server each time; so is
        # a safe one a server closed on without answering (a container killed outright).
        # That keeps a copy of each request (12-20 % more CPU per request, measured), but
        # without it a `docker rm -f` under load failed 24 requests instead of at most 4
        "    option redispatch 1",
        "    retries 2",
        "    retry-on conn-failure empty-response",
        f"    timeout connect {c.timeout_connect}s",
        f"    timeout client {c.timeout_client}s",
        f"    timeout http-request {c.timeout_http_request}s",
        f"    timeout http-keep-alive {c.timeout_keep_alive}s",
        f"    timeout server {c.timeout_server}s",
        f"    timeout queue {c.timeout_connect}s",
        "    timeout tunnel 1h",
        "    timeout client-fin 5s",
        *(f"    errorfile {status} {page(status)}" for status in (400, 408, 500, 502, 503, 504)),
        "",
        "frontend http",
        f"    bind {c.bind}{c.bind_options}",
        *_acme_rules(c),
        *_request_rules(c, "http"),
        *_https_frontend(c),
        "",
        f"backend {NOT_FOUND_BACKEND}",
        f"    http-request return status 404 errorfile {page(404)}",
    ]
    for app in sorted(table.backends):
        backend = table.backends[app]
        out += [
            "",
            f"backend {_safe_token(backend.name, 'backend name')}",
            "    balance roundrobin",
            *_app_settings(backend.routing, config),
        ]
        for server in backend.servers:
            options = server_options(server)
            if not _is_ip(server.address):
                options += " init-addr libc,none"
            endpoint = _endpoint(_safe_token(server.address, "address"), server.port)
            out.append(f"    server {_safe_token(server.name, 'server name')} {endpoint} {options}")
    out += _render_tcp(table, config)
    return "\n".join(out) + "\n"


def _access_ring(config: RouterConfig) -> list[str]:
    """The ring the access lines go through. A request's line is only written into HAProxy's
    memory; the ring's forwarder sends many lines per write over one stream connection to the
    controller (accesslog.py), and connects again when the controller comes back. A datagram
    per request, as before, cost HAProxy ~11 µs of a ~60 µs request (measured). HAProxy never
    waits: when the controller does not read and the ring is full, new lines are dropped and
    counted (`show events`, read by `Runtime.dropped_logs`)."""
    if not config.access_log:
        return []
    return [
        "",
        f"ring {ACCESS_RING}",
        "    format raw",
        "    maxlen 16384",
        f"    size {ACCESS_RING_BYTES}",
        "    timeout connect 5s",
        "    timeout server 1h",
        f"    server controller unix@{config.access_socket}",
    ]


def _request_rules(config: RouterConfig, proto: str) -> list[str]:
    """A frontend's rules after its bind line, the same for http and https but for the
    X-Forwarded-Proto they set: what a client may not decide, the request id, routing."""
    c = config
    page = c.page
    return [
        "    unique-id-format %[uuid()]",
        # what a client must not decide: its headers' size, which host, who it is
        f"    http-request deny status 431 errorfile {page(431)}"
        f" if {{ req.hdrs,length gt {c.max_header_bytes} }}",
        "    http-request deny deny_status 400 if { req.hdr_cnt(host) gt 1 }",
        "    http-request del-header Forwarded",
        "    http-request del-header X-Forwarded-For",
        "    http-request del-header X-Forwarded-Host",
        "    http-request del-header X-Forwarded-Proto",
        "    http-request del-header X-Forwarded-Port",
        "    option forwardfor",
        f"    http-request set-header X-Forwarded-Proto {proto}",
        "    http-request set-header X-Forwarded-Port %[dst_port]",
        # a request id: the client's if it sent one sane one, a new one otherwise
        "    acl request_id_sane req.fhdr_cnt(x-request-id) eq 1",
        "    acl request_id_sane_text req.fhdr(x-request-id)"
        f" -m reg ^[A-Za-z0-9._-]{{1,{REQUEST_ID_MAX}}}$",
        "    http-request set-header X-Request-Id %[unique-id]"
        " unless request_id_sane request_id_sane_text",
        "    http-request set-var(txn.request_id) req.fhdr(x-request-id)",
        "    http-after-response set-header X-Request-Id %[var(txn.request_id)]"
        " if { var(txn.request_id) -m found }",
        # a request a server got but did not answer is retried only if it is safe to repeat
        f"    http-request disable-l7-retry unless {{ method {SAFE_METHODS} }}",
        # routing: the exact host, else the most specific wildcard, else nothing here
        "    http-request set-var(txn.host) req.hdr(host),lower,field(1,:)",
        f"    http-request set-var(txn.backend) var(txn.host),map_str({c.hosts_map})",
        f"    http-request set-var(txn.backend) var(txn.host),map_end({c.wildcards_map})"
        " unless { var(txn.backend) -m found }",
        "    use_backend %[var(txn.backend)] if { var(txn.backend) -m found }",
        f"    default_backend {NOT_FOUND_BACKEND}",
    ]


def _acme_rules(config: RouterConfig) -> list[str]:
    """With HTTPS on, the http frontend answers ACME HTTP-01 challenges itself, from the
    challenges map, before any host routing: `GET /.well-known/acme-challenge/<token>` for
    any host name gets the token's key authorization."""
    if config.https_addr is None:
        return []
    return [
        "    http-request set-var(txn.acme) path,field(4,/),map_str("
        f"{config.acme_map}) if {{ path_reg ^/\\.well-known/acme-challenge/[A-Za-z0-9_-]+$ }}",
        "    http-request return status 200 content-type text/plain"
        ' lf-string "%[var(txn.acme)]" if { var(txn.acme) -m found }',
    ]


def _https_frontend(config: RouterConfig) -> list[str]:
    """The https frontend: TLS with the certificate SNI picks from the crt-list (tls.py
    writes it; its first entry, the router's self-signed certificate, for any other name),
    HTTP/2 or HTTP/1.1 by ALPN, then the http frontend's own rules."""
    c = config
    if c.https_addr is None:
        return []
    return [
        "",
        "frontend https",
        f"    bind {c.https_bind}{c.bind_options} ssl crt-list {c.crt_list} alpn h2,http/1.1",
        *_request_rules(c, "https"),
    ]


def _render_tcp(table: Table, config: RouterConfig) -> list[str]:
    """The TCP routes: keep them last, since every section after `defaults tcp` is in its
    mode. Connections are logged one line each when they end."""
    if not table.listeners:
        return []
    c = config
    out = [
        "",
        "defaults tcp",
        "    mode tcp",
        "    log global",
        '    log-format "%[date(0,us)] %b %s tcp client=%ci:%cp bytes_in=%U bytes_out=%B'
        ' duration_ms=%Tt connect_ms=%Tc termination=%ts retries=%rc"',
        "    option dontlognull",
        "    option redispatch 1",
        "    retries 2",
        f"    timeout connect {c.timeout_connect}s",
        f"    timeout client {c.timeout_tcp}s",
        f"    timeout server {c.timeout_tcp}s",
        f"    timeout queue {c.timeout_connect}s",
        "    timeout client-fin 5s",
    ]
    for port in sorted(table.listeners):
        listener = table.listeners[port]
        out += [
            "",
            f"listen {_safe_token(listener.name, 'listener name')}",
            f"    bind {c.tcp_bind(listener.port)}{c.bind_options}",
            "    balance roundrobin",
        ]
        for server in listener.servers:
            options = server_options(server)
            if not _is_ip(server.address):
                options += " init-addr libc,none"
            endpoint = _endpoint(_safe_token(server.address, "address"), server.port)
            out.append(f"    server {_safe_token(server.name, 'server name')} {endpoint} {options}")
    return out


def _app_settings(routing: Routing, config: RouterConfig) -> list[str]:
    """An app's own `timeout server` (504 after it), and its redirect of plain HTTP to HTTPS
    (308 keeps the method and body; only where this router serves HTTPS, else it would send
    clients nowhere). The redirect keeps the host and path, with the router's HTTPS port
    unless it is 443."""
    lines = []
    if routing.timeout is not None:
        lines.append(f"    timeout server {int(routing.timeout)}s")
        lines.append(f"    errorfile 504 {config.timeout_page(routing.timeout)}")
    if routing.https_only and config.https_addr is not None:
        port = _parse_addr(config.https_addr)[1]
        if port == 443:
            lines.append("    http-request redirect scheme https code 308 unless { ssl_fc }")
        else:
            lines.append(
                f"    http-request redirect location https://%[var(txn.host)]:{port}%[pathq]"
                " code 308 unless { ssl_fc }"
            )
    return lines


def render_maps(table: Table) -> dict[str, str]:
    """Map file name (in the run directory) → contents: `key backend` lines. Hosts sorted;
    wildcard suffixes most specific first, since HAProxy's `map_end` takes the first match."""
    hosts = "".join(
        f"{_safe_token(host, 'host')} {table.backends[app].name}\n"
        for host, app in sorted(table.hosts.items())
        if app in table.backends
    )
    wildcards = "".join(
        f"{_safe_token(suffix, 'host')} {table.backends[table.wildcards[suffix]].name}\n"
        for suffix in wildcard_order(table.wildcards)
        if table.wildcards[suffix] in table.backends
    )
    return {HOSTS_MAP: hosts, WILDCARDS_MAP: wildcards}


def write_pages(config: RouterConfig, table: Table | None = None) -> None:
    """Writes the error pages the config for `table` names into `config.pages_dir` (when they
    differ): the router's own, and a 504 page for each app timeout the table has."""
    wanted = [(config.page(p.status), p) for p in pages.pages(config.timeout_server)]
    timeouts = {b.routing.timeout for b in table.backends.values()} if table else set()
    for seconds in sorted(t for t in timeouts if t is not None):
        page = next(p for p in pages.pages(seconds) if p.status == 504)
        wanted.append((config.timeout_page(seconds), page))
    for path, page in wanted:
        data = pages.response(page)
        with contextlib.suppress(OSError):
            if path.read_bytes() == data:
                continue
        write_atomically(path, data)


def write_atomically(path: Path, text: str | bytes) -> None:
    """Replaces `path` with `text` in one step: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def validate(config_path: Path, binary: str = "haproxy", *, strict: bool = False) -> None:
    """Runs `haproxy -c` on the file; raises ConfigError with HAProxy's words if it refuses it.
    `strict` also refuses warnings."""
    argv = [binary, "-c", "-f", str(config_path)]
    if strict:
        argv.insert(1, "-dW")
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"could not run {binary} -c: {exc}") from exc
    if result.returncode != 0:
        lines = (result.stdout + result.stderr).splitlines()
        output = "\n".join(line for line in lines if "[NOTICE]" not in line).strip()
        raise ConfigError(f"haproxy refused {config_path}: {output}")


# -- the runtime API --------------------------------------------------------------------------


def _exchange(path: Path, line: str, timeout: float) -> str:
    """Sends one command line to a HAProxy CLI socket and returns the whole answer."""
    chunks: list[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(line.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


OPERATIONAL = {0: "down", 1: "starting", 2: "up", 3: "stopping"}
ADMIN_MAINT = 0x01 | 0x02 | 0x04 | 0x20  # forced, inherited, configured, no address
ADMIN_DRAIN = 0x08 | 0x10  # forced, inherited


@dataclass(frozen=True, slots=True)
class ServerState:
    """One server as `show servers state` reports it."""

    name: str
    address: str
    port: int
    operational: str  # "down", "starting", "up" or "stopping"
    admin: int  # HAProxy's admin state bits (see ADMIN_MAINT, ADMIN_DRAIN)
    weight: int

    @property
    def maint(self) -> bool:
        return bool(self.admin & ADMIN_MAINT)

    @property
    def drain(self) -> bool:
        return bool(self.admin & ADMIN_DRAIN)


class Runtime:
    """HAProxy's runtime API (the admin stats socket): one command per connection."""

    def __init__(self, admin_socket: Path, timeout: float = 5.0) -> None:
        self._path = admin_socket
        self._timeout = timeout

    def command(self, line: str) -> str:
        """Sends one command; returns HAProxy's answer (without trailing blank lines)."""
        if any(c in line for c in "\n\r;\0"):
            raise ValueError(f"one command only, without newlines or ';': {line!r}")
        try:
            answer = _exchange(self._path, line, self._timeout)
        except OSError as exc:
            raise RuntimeApiError(f"HAProxy's runtime API at {self._path}: {exc}") from exc
        return answer.rstrip("\n")

    def dropped_logs(self) -> int:
        """How many log lines HAProxy could not send since it started: those it could not
        write anywhere (`show info`) and those the access ring had no room for (`show
        events`)."""
        dropped = 0
        for line in self.command("show info").splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "DroppedLogs":
                dropped += int(value.strip() or 0)
        for line in self.command("show events").splitlines():
            name, _, rest = line.partition(":")
            if name.strip() == ACCESS_RING:
                match = re.search(r"\b(\d+) dropped\b", rest)
                dropped += int(match.group(1)) if match else 0
        return dropped

    def _expect(self, line: str, *answers: str) -> str:
        answer = self.command(line).strip()
        if answer not in answers:
            raise RuntimeApiError(f"HAProxy refused `{line}`: {answer or '(no answer)'}")
        return answer

    def servers(self, backend: str) -> dict[str, ServerState]:
        """Name → state of every server of `backend`."""
        answer = self.command(f"show servers state {_safe_token(backend, 'backend')}")
        lines = answer.splitlines()
        if not lines or lines[0].strip() != "1":
            raise RuntimeApiError(f"show servers state {backend}: {answer.strip()}")
        fields: list[str] = []
        result: dict[str, ServerState] = {}
        for line in lines[1:]:
            if line.startswith("#"):
                fields = line[1:].split()
                continue
            if not line.strip():
                continue
            row = dict(zip(fields, line.split(), strict=False))
            state = ServerState(
                name=row["srv_name"],
                address=row["srv_addr"],
                port=int(row["srv_port"]),
                operational=OPERATIONAL.get(int(row["srv_op_state"]), row["srv_op_state"]),
                admin=int(row["srv_admin_state"]),
                weight=int(row["srv_uweight"]),
            )
            result[state.name] = state
        return result

    def proxies(self) -> set[str]:
        """The names of the running worker's backends (and `listen` sections)."""
        answer = self.command("show backend")
        lines = answer.splitlines()
        if not lines or not lines[0].startswith("# name"):
            raise RuntimeApiError(f"show backend: {answer.strip()[:200]}")
        return {line.strip() for line in lines[1:] if line.strip()}

    def add_server(self, backend: str, server: Server) -> None:
        """Adds `server` to `backend` and puts it into service (health checks on), or into
        drain if it is `draining`. A server of that name already there at the same address
        (one left in maintenance by `remove_server`, say) is put back into service instead."""
        target = self._target(backend, server.name)
        address = _resolve(server.address)
        answer = self.command(
            f"add server {target} {_endpoint(address, server.port)} {server_options(server)}"
        ).strip()
        if answer.startswith("Already exists"):
            current = self.servers(backend).get(server.name)
            if current is None or (current.address, current.port) != (address, server.port):
                raise RuntimeApiError(f"{target} exists with another address: {answer}")
            weight = 0 if server.draining else WEIGHT
            self._expect(f"set server {target} weight {weight}", "")
            self._expect(f"set server {target} state {'drain' if server.draining else 'ready'}", "")
            return
        if answer != "New server registered.":
            raise RuntimeApiError(f"HAProxy refused to add {target}: {answer}")
        self._expect(f"enable health {target}", "")
        self._expect(f"enable server {target}", "")

    def drain(self, backend: str, name: str) -> None:
        """No new requests go to the server; those in flight finish."""
        self._expect(f"set server {self._target(backend, name)} state drain", "")

    def ready(self, backend: str, name: str) -> None:
        """The server takes requests again (undoes `drain`, and a rendered `weight 0`)."""
        target = self._target(backend, name)
        self._expect(f"set server {target} state ready", "")
        self._expect(f"set server {target} weight {WEIGHT}", "")

    def remove_server(self, backend: str, name: str) -> bool:
        """Takes the server out of service and deletes it once no connection is attached to it
        (requests in flight finish first). False: still busy, call again later. True: gone
        (also if it was already).

        Each call passes the server through drain into maintenance: entering maintenance is
        when HAProxy closes a server's idle connections, and a request that finished since the
        last call may have left one (kept for reuse) that would block the delete."""
        target = self._target(backend, name)
        for state in ("drain", "maint"):
            answer = self.command(f"set server {target} state {state}").strip()
            if answer in ("No such server.", "No such backend."):
                return True
            if answer:
                raise RuntimeApiError(f"HAProxy refused to stop {target}: {answer}")
        answer = self.command(f"del server {target}").strip()
        if answer in ("Server deleted.", "No such server.", "No such backend."):
            return True
        if answer.startswith("Server still has connections"):
            return False
        raise RuntimeApiError(f"HAProxy refused to delete {target}: {answer}")

    def set_map(self, map_path: Path, key: str, value: str) -> None:
        """Maps `key` to `value` in the loaded map (replacing what it mapped to)."""
        ref = _safe_token(str(map_path), "map")
        line = f"{ref} {_safe_token(key, 'map key')} {_safe_token(value, 'map value')}"
        answer = self.command(f"set map {line}").strip()
        if answer == "entry not found.":
            self._expect(f"add map {line}", "")
        elif answer:
            raise RuntimeApiError(f"HAProxy refused `set map {line}`: {answer}")

    def del_map(self, map_path: Path, key: str) -> None:
        """Removes `key` from the loaded map (nothing if it is not there)."""
        ref = _safe_token(str(map_path), "map")
        self._expect(f"del map {ref} {_safe_token(key, 'map key')}", "", "Key not found.")

    @staticmethod
    def _target(backend: str, name: str) -> str:
        return f"{_safe_token(backend, 'backend')}/{_safe_token(name, 'server name')}"


def _resolve(address: str) -> str:
    """An IP address for `address` (HAProxy does not resolve servers added at run time)."""
    _safe_token(address, "address")
    if _is_ip(address):
        return address
    try:
        infos = socket.getaddrinfo(address, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise RuntimeApiError(f"cannot resolve server address {address!r}: {exc}") from exc
    # IPv4 first: agents are usually reached on it
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return str(infos[0][4][0])


# -- the process ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Processes:
    """What the master CLI's `show proc` says."""

    master: int
    reloads: int
    failed_reloads: int
    workers: tuple[int, ...]  # current workers
    old_workers: tuple[int, ...]  # still finishing their requests after a reload


def parse_show_proc(text: str) -> Processes:
    master = reloads = failed = 0
    workers: list[int] = []
    old: list[int] = []
    section = "master"
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("# ").lower()
            section = (
                "old"
                if title.startswith("old workers")
                else "workers"
                if title.startswith("workers")
                else "other"
                if not title.startswith("<pid>")
                else "master"
            )
            continue
        words = line.split()
        if len(words) < 3 or not words[0].isdigit():
            continue
        if section == "master" and words[1] == "master":
            master, reloads = int(words[0]), int(words[2])
            found = re.search(r"failed:\s*(\d+)", line)
            failed = int(found.group(1)) if found else 0
        elif section == "workers" and words[1] == "worker":
            workers.append(int(words[0]))
        elif section == "old" and words[1] == "worker":
            old.append(int(words[0]))
    if not master:
        raise ProcessError(f"unexpected answer to show proc: {text.strip()!r}")
    return Processes(master, reloads, failed, tuple(workers), tuple(old))


class HAProxy:
    """The HAProxy master process serving one run directory.

    It runs in the foreground as this process's child (no `daemon`), but in its own session,
    so signals to the controller's process group do not reach it and it keeps serving if the
    controller dies; a later controller finds it through the pid file and adopts it."""

    def __init__(
        self,
        config: RouterConfig,
        binary: str = "haproxy",
        *,
        output: Path | None = None,
        timeout: float = 15.0,
    ) -> None:
        """`output`: a file HAProxy's own stdout/stderr (its log lines) are appended to;
        by default it shares the controller's. `timeout`: how long start and reload may take."""
        self._config = config
        self._binary = binary
        self._output = output
        self._timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None  # the master's pid, ours or adopted

    @property
    def pid(self) -> int | None:
        """The master's pid while it runs."""
        return self._pid if self.running() else None

    def start(self) -> None:
        """Starts HAProxy on the config file already written (and validated), unless one is
        running for this run directory already: that one is adopted instead. Returns once a
        worker serves; raises ProcessError if it exits or takes too long."""
        if self.adopt():
            return
        c = self._config
        argv = [
            self._binary,
            "-W",
            "-S",
            f"{c.master_socket},mode,600",
            "-f",
            str(c.config_path),
            "-p",
            str(c.pid_file),
        ]
        with contextlib.suppress(FileNotFoundError):
            c.pid_file.unlink()
        out = self._output.open("ab") if self._output is not None else None
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        except OSError as exc:
            raise ProcessError(f"could not run {self._binary}: {exc}") from exc
        finally:
            if out is not None:
                out.close()
        self._pid = self._proc.pid
        deadline = time.monotonic() + self._timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = self._pid = None
                where = f"; see {self._output}" if self._output else ""
                raise ProcessError(f"haproxy exited with code {code} while starting{where}")
            procs = self._show_proc()
            if procs is not None and procs.workers:
                break
            if time.monotonic() > deadline:
                self.stop()
                raise ProcessError(f"haproxy did not start in {self._timeout:.0f}s")
            time.sleep(0.05)
        log.info("haproxy started", extra={"pid": self._pid, "workers": list(procs.workers)})

    def running(self) -> bool:
        """Whether the master process lives (ours or adopted)."""
        if self._proc is not None:
            if self._proc.poll() is None:
                return True
            log.warning(
                "haproxy exited", extra={"pid": self._proc.pid, "code": self._proc.returncode}
            )
            self._proc = self._pid = None
            return False
        if self._pid is not None and _is_our_haproxy(self._pid, self._config):
            return True
        self._pid = None
        return False

    def adopt(self) -> bool:
        """Finds an HAProxy a previous controller left serving this run directory and takes
        charge of it. True if one runs (this object's own counts too)."""
        if self.running():
            return True
        try:
            pid = int(self._config.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        if not _is_our_haproxy(pid, self._config) or self._show_proc() is None:
            return False
        self._pid = pid
        log.info("haproxy adopted", extra={"pid": pid})
        return True

    def processes(self) -> Processes:
        """The master and its workers, from the master CLI."""
        procs = self._show_proc()
        if procs is None:
            raise ProcessError(f"haproxy's master CLI at {self._config.master_socket} is silent")
        return procs

    def reload(self) -> None:
        """Seamless reload on the config file already written (and validated): the master
        starts a new worker, which takes over the listening sockets; the old worker finishes
        its requests (at most `hard_stop_after`) and exits. Returns once the new worker runs;
        raises ConfigError if HAProxy refused the new config (the old worker keeps serving)
        and ProcessError if it took too long."""
        if not self.running():
            raise ProcessError("haproxy is not running: nothing to reload")
        before = self.processes()
        with contextlib.suppress(OSError):  # the master closes the connection as it re-executes
            _exchange(self._config.master_socket, "reload", self._timeout)
        deadline = time.monotonic() + self._timeout
        while True:
            procs = self._show_proc()
            if procs is not None:
                if procs.failed_reloads > before.failed_reloads:
                    raise ConfigError("haproxy refused to reload; the old worker still serves")
                fresh = procs.workers and not set(procs.workers) & set(before.workers)
                if procs.reloads > before.reloads and fresh:
                    break
            if not self.running():
                raise ProcessError("haproxy exited while reloading")
            if time.monotonic() > deadline:
                raise ProcessError(f"haproxy did not reload in {self._timeout:.0f}s")
            time.sleep(0.05)
        log.info(
            "haproxy reloaded",
            extra={"workers": list(procs.workers), "old_workers": list(procs.old_workers)},
        )

    def stop(self, *, graceful: bool = False, timeout: float | None = None) -> None:
        """Stops HAProxy: at once (SIGTERM), or `graceful`ly (SIGUSR1: stop listening, finish
        the requests in flight, at most `hard_stop_after`). SIGKILL if it outlasts `timeout`."""
        if not self.running():
            return
        pid = self._pid
        assert pid is not None
        if timeout is None:
            timeout = self._config.hard_stop_after + 10.0 if graceful else 10.0
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1 if graceful else signal.SIGTERM)
        if not self._wait(pid, timeout):
            log.warning("haproxy did not stop; killing it", extra={"pid": pid})
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == pid:  # its session: the master and its workers
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            self._wait(pid, 10.0)
        self._proc = self._pid = None
        with contextlib.suppress(FileNotFoundError):
            self._config.pid_file.unlink()
        log.info("haproxy stopped", extra={"pid": pid})

    def _wait(self, pid: int, timeout: float) -> bool:
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while _is_our_haproxy(pid, self._config):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _show_proc(self) -> Processes | None:
        try:
            return parse_show_proc(_exchange(self._config.master_socket, "show proc", 2.0))
        except (OSError, ProcessError):
            return None


def _is_our_haproxy(pid: int, config: RouterConfig) -> bool:
    """Whether `pid` is a live HAProxy started on this run directory's config."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[:1] == ["Z"]:
        return False
    program = Path(argv[0].decode(errors="replace")).name
    return "haproxy" in program and str(config.config_path).encode() in argv
