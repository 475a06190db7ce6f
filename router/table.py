"""The route table: which host goes to which app, and which tasks serve each app.

Responsibility: turn what ZooKeeper says (apps, tasks, custom domains) into a `Table`, and two
tables into the `Changes` that take HAProxy from one to the other. Pure: no I/O, no clock, no
threads of its own; any thread may call it (the router controller's thread does). Imports only
the framework's model.

Shapes, as HAProxy will see them (haproxy.py renders them):

- one backend per app, named `app_<app>`, present even with no server (it then answers 503);
- a server per task that should get traffic: a "web" task that is running, not reported
  unhealthy, with a host and a port; a web task being killed stays in as a *draining* server
  (no new requests; those in flight finish) until it is gone;
- hosts: every app answers at `<app>.<base domain>`; custom domains map exact host names, and
  `*.example.com` maps any name ending in `.example.com` (not `example.com` itself). An app's
  own `<app>.<base domain>` name always wins over a custom domain naming the same host.
- TCP routes: a `Listener` per route, named `tcp_<port>`, whose servers are the tasks of the
  route's process type chosen as for web (running and not unhealthy; killing → draining),
  each carrying the route's PROXY protocol version (`send_proxy`).

Server names are derived from task ids (see `server_name`), so a task keeps its server name
across rounds, reloads and controller restarts.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from berth.framework.model import Task, TcpRoute

WEB = "web"
MAX_SERVER_NAME = 64
_SERVER_NAME_OK = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_SERVER_NAME}}}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
# A host name as it may appear in a map: lower-case labels of letters, digits and hyphens.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")


@dataclass(frozen=True, slots=True)
class Server:
    """One task as an HAProxy server."""

    name: str  # HAProxy server name: [A-Za-z0-9_.-], ≤ 64 chars, stable for a task id
    address: str  # IP address or host name of the agent
    port: int
    task_id: str
    draining: bool = False  # takes no new requests; in-flight ones finish
    send_proxy: str | None = None  # "v1"/"v2": a PROXY protocol header opens each connection


@dataclass(frozen=True, slots=True)
class Routing:
    """An app's router settings (`routing:set`, model.App)."""

    timeout: int | None = None  # seconds for the app's first byte, else 504; None: the default
    https_only: bool = False  # plain HTTP requests are redirected to HTTPS


@dataclass(frozen=True, slots=True)
class Backend:
    app: str
    name: str  # HAProxy backend name: f"app_{app}"
    servers: tuple[Server, ...]  # sorted by name
    routing: Routing = Routing()


@dataclass(frozen=True, slots=True)
class Table:
    """Everything the router serves. Mappings iterate in sorted key order."""

    backends: Mapping[str, Backend]  # app → Backend (every app has one, even with no servers)
    hosts: Mapping[str, str]  # exact host name (lower case, no port) → app
    wildcards: Mapping[str, str]  # "*.example.com" is stored as suffix ".example.com" → app
    listeners: Mapping[int, Listener] = field(default_factory=dict)  # TCP routes by port


@dataclass(frozen=True, slots=True)
class Listener:
    """A TCP route as HAProxy serves it: a `listen` section bound to `port`."""

    port: int
    app: str
    process: str
    proxy_protocol: str | None  # None, "v1" or "v2"
    name: str  # HAProxy proxy name: f"tcp_{port}"
    servers: tuple[Server, ...]  # sorted by name

    @property
    def shape(self) -> tuple[int, str, str, str | None]:
        """What only a reload can change."""
        return (self.port, self.app, self.process, self.proxy_protocol)


EMPTY = Table(backends={}, hosts={}, wildcards={})


@dataclass(frozen=True, slots=True)
class Changes:
    """What takes HAProxy from one table to the next.

    `structural` means the runtime API cannot express the change (an app added or removed, an
    app's router settings changed, or a wildcard that must be matched before an existing one):
    render and reload. Otherwise the
    lists are runtime API operations, each naming a backend (and a server) or a map kind
    ("hosts" or "wildcards") with a key and the backend name it maps to. A server whose address
    or port changed appears in both `remove` and `add`.
    """

    structural: bool = False
    add: tuple[tuple[str, Server], ...] = ()  # (backend, server)
    remove: tuple[tuple[str, str], ...] = ()  # (backend, server name)
    drain: tuple[tuple[str, str], ...] = ()  # (backend, server name)
    ready: tuple[tuple[str, str], ...] = ()  # (backend, server name): was draining, is not
    map_set: tuple[tuple[str, str, str], ...] = ()  # (kind, key, backend)
    map_del: tuple[tuple[str, str], ...] = ()  # (kind, key)

    @property
    def empty(self) -> bool:
        return not (
            self.structural
            or self.add
            or self.remove
            or self.drain
            or self.ready
            or self.map_set
            or self.map_del
        )


def backend_name(app: str) -> str:
    return f"app_{app}"


def server_name(task_id: str) -> str:
    """The HAProxy server name of a task: the task id itself when it is already a valid,
    short enough name (Berth's ids usually are); otherwise the id with unsafe characters
    replaced, cut, and suffixed with a hash of the whole id, so that it stays unique."""
    if _SERVER_NAME_OK.fullmatch(task_id):
        return task_id
    digest = hashlib.sha256(task_id.encode()).hexdigest()[:10]
    stem = _UNSAFE.sub("_", task_id)[: MAX_SERVER_NAME - len(digest) - 1]
    return f"{stem}-{digest}"


def listener_name(port: int) -> str:
    return f"tcp_{port}"


def _server(task: Task, process: str = WEB, send_proxy: str | None = None) -> Server | None:
    if task.process != process or task.port <= 0 or not task.hostname:
        return None
    if task.state == "running" and task.healthy is not False:
        draining = False
    elif task.state == "killing":
        draining = True
    else:
        return None
    return Server(
        name=server_name(task.id),
        address=task.hostname,
        port=task.port,
        task_id=task.id,
        draining=draining,
        send_proxy=send_proxy,
    )


def _host_key(host: str) -> str | None:
    """A host name in the form maps use (lower case, no trailing dot), or None if it is not
    one: a map key must never hold spaces or anything else HAProxy would split on."""
    host = host.strip().lower().rstrip(".")
    return host if _HOST.fullmatch(host) else None


def build(
    apps: Iterable[str],
    tasks: Iterable[Task],
    domains: Mapping[str, str],
    base_domain: str,
    tcp_routes: Iterable[TcpRoute] = (),
    routing: Mapping[str, Routing] | None = None,
) -> Table:
    """The table for these apps, tasks, custom domains (domain → app), TCP routes and the
    apps' router settings (an app absent from `routing` has the defaults).

    Tasks, domains and routes of apps not in `apps` are ignored, as are domains that are not
    valid host names (or `*.` + one)."""
    tasks = list(tasks)
    names = sorted(set(apps))
    known = set(names)
    servers: dict[str, dict[str, Server]] = {app: {} for app in names}
    for task in tasks:
        if task.app not in known:
            continue
        server = _server(task)
        if server is None:
            continue
        current = servers[task.app].get(server.name)
        # two records of one task (should not happen): the one still serving wins
        if current is None or (current.draining and not server.draining):
            servers[task.app][server.name] = server
    backends = {
        app: Backend(
            app=app,
            name=backend_name(app),
            servers=tuple(servers[app][name] for name in sorted(servers[app])),
            routing=(routing or {}).get(app, Routing()),
        )
        for app in names
    }

    hosts: dict[str, str] = {}
    wildcards: dict[str, str] = {}
    for domain, app in sorted(domains.items()):
        if app not in known:
            continue
        if domain.startswith("*."):
            key = _host_key(domain[2:])
            if key is not None:
                wildcards["." + key] = app
        else:
            key = _host_key(domain)
            if key is not None:
                hosts[key] = app
    base = _host_key(base_domain) if base_domain else None
    if base is not None:
        for app in names:
            hosts[f"{app}.{base}"] = app  # an app's own name wins over a custom domain
    return Table(
        backends=backends,
        hosts=dict(sorted(hosts.items())),
        wildcards=dict(sorted(wildcards.items())),
        listeners=_listeners(tcp_routes, tasks, known),
    )


def _listeners(
    tcp_routes: Iterable[TcpRoute], tasks: list[Task], known: set[str]
) -> dict[int, Listener]:
    listeners: dict[int, Listener] = {}
    for route in sorted(tcp_routes, key=lambda r: r.port):
        if route.app not in known or route.port in listeners:
            continue
        servers: dict[str, Server] = {}
        for task in tasks:
            if task.app != route.app:
                continue
            server = _server(task, route.process, route.proxy_protocol)
            if server is None:
                continue
            current = servers.get(server.name)
            if current is None or (current.draining and not server.draining):
                servers[server.name] = server
        listeners[route.port] = Listener(
            port=route.port,
            app=route.app,
            process=route.process,
            proxy_protocol=route.proxy_protocol,
            name=listener_name(route.port),
            servers=tuple(servers[name] for name in sorted(servers)),
        )
    return listeners


def wildcard_order(wildcards: Iterable[str]) -> list[str]:
    """The order wildcard suffixes must be matched in (HAProxy's `map_end` takes the first
    match in file order): the most specific (longest) first, ties by name."""
    return sorted(wildcards, key=lambda suffix: (-len(suffix), suffix))


def diff(old: Table, new: Table) -> Changes:
    """The changes that take HAProxy from serving `old` to serving `new`."""
    structural = set(old.backends) != set(new.backends) or any(
        old.backends[app].routing != new.backends[app].routing
        for app in set(old.backends) & set(new.backends)
    )
    add: list[tuple[str, Server]] = []
    remove: list[tuple[str, str]] = []
    drain: list[tuple[str, str]] = []
    ready: list[tuple[str, str]] = []

    def servers(backend: str, before: Iterable[Server], after: Iterable[Server]) -> None:
        was = {s.name: s for s in before}
        now = {s.name: s for s in after}
        for name in sorted(set(was) | set(now)):
            a, b = was.get(name), now.get(name)
            if a is None and b is not None:
                add.append((backend, b))
            elif b is None and a is not None:
                remove.append((backend, name))
            elif a is not None and b is not None:
                if (a.address, a.port, a.send_proxy) != (b.address, b.port, b.send_proxy):
                    remove.append((backend, name))
                    add.append((backend, b))
                elif b.draining and not a.draining:
                    drain.append((backend, name))
                elif a.draining and not b.draining:
                    ready.append((backend, name))

    for app in sorted(set(old.backends) | set(new.backends)):
        before = old.backends.get(app)
        after = new.backends.get(app)
        servers(
            backend_name(app),
            before.servers if before else (),
            after.servers if after else (),
        )
    # TCP routes: a listener added, removed or changed is structural (a bind to add or drop);
    # its servers change at run time like a backend's
    if {p: x.shape for p, x in old.listeners.items()} != {
        p: x.shape for p, x in new.listeners.items()
    }:
        structural = True
    for port in sorted(set(old.listeners) & set(new.listeners)):
        servers(listener_name(port), old.listeners[port].servers, new.listeners[port].servers)

    map_set: list[tuple[str, str, str]] = []
    map_del: list[tuple[str, str]] = []
    for kind, was_map, now_map in (
        ("hosts", old.hosts, new.hosts),
        ("wildcards", old.wildcards, new.wildcards),
    ):
        for key in sorted(set(was_map) | set(now_map)):
            if key not in now_map:
                map_del.append((kind, key))
            elif was_map.get(key) != now_map[key]:
                map_set.append((kind, key, backend_name(now_map[key])))
    # An entry added at run time goes to the end of HAProxy's list, but a wildcard must come
    # before any less specific one it falls under: only a reload (from a sorted file) can do that.
    added = set(new.wildcards) - set(old.wildcards)
    if any(w != v and w.endswith(v) for w in added for v in new.wildcards):
        structural = True

    return Changes(
        structural=structural,
        add=tuple(add),
        remove=tuple(remove),
        drain=tuple(drain),
        ready=tuple(ready),
        map_set=tuple(map_set),
        map_del=tuple(map_del),
    )
