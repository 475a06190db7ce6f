"""Berth's state in ZooKeeper: the only module (with leader.py, later) that talks to kazoo.

The znode tree, under the chroot given by `--zk HOSTS/chroot` (default `/berth`):

    /meta                          {"schema": 1, "instance": <uuid>}: the instance id labels
                                   this Berth's containers (two Berths can share one Docker)
    /bootstrap                     created once, with the first admin token, in one transaction
    /tokens                        data: empty; its data version serialises token changes
    /tokens/<id>                   {"id", "digest" (SHA-256 of the token), "description", …}
    /apps/<name>                   {"name", "created_at", "release": N, ["latest": M],
                                   ["timeout": S], ["https_only": true]}: N is the current
                                   release (the one that runs); M, when above N, the newest
                                   one written (its release phase pending or failed); the
                                   router settings (routing.py) live here, read by the router
    /apps/<name>/formation         {"web": 1, …}: process type → quantity
    /apps/<name>/limits            {"web": {"memory_mb": 512, "cpus": 1.0}, …}
    /apps/<name>/restarts          {"web": <epoch>, …}: tasks launched before are replaced
    /apps/<name>/checks            {"web": {"type": "http", "path": "/up", "startup": 60}}:
                                   health checks per process type (checks.py)
    /apps/<name>/domains           data: empty; its data version serialises the app's domain
                                   changes (created with the app's first custom domain)
    /apps/<name>/domains/<domain>  empty: the app's custom domains, an index of /domains
    /domains/<domain>              {"app", "created_at", "op"}: the app a custom domain routes
                                   to (`www.example.com`, `*.example.com`); one znode per
                                   domain, so a domain belongs to at most one app. The router
                                   reads these.
    /apps/<name>/tcp_routes        data: empty; its data version serialises the app's TCP
                                   route changes (created with the app's first TCP route)
    /apps/<name>/tcp_routes/<port> empty: the app's TCP routes, an index of /tcp_routes
    /tcp_routes/<port>             {"app", "process", "proxy_protocol", "created_at", "op"}:
                                   one per router port, so a port belongs to at most one
                                   route in the whole Berth. The router reads these.
    /apps/<name>/drains            {"drains": [{"id", "url", "created_at"}, …]}: the app's log
                                   drains (drainurl.py), at most 10, changed by CAS; created
                                   with the first one. `berth logd` watches these.
    /apps/<name>/runs              {"next": N}: the app's one-off run counter (created with its
                                   first run); a run's number comes from a CAS on it, in one
                                   transaction with the run's znode
    /apps/<name>/runs/<N>          one per one-off run (framework/runs.py), N zero-padded to 10
                                   digits: {"command": [argv], "release", "attach", "tty",
                                   "memory_mb", "cpus", "created_by", "created_at", "secret":
                                   sealed (bound to `run:<app>/<N>`), "state": pending|launched|
                                   finished, "task_id", "exit_code", "outcome"}; changed by CAS;
                                   the newest 50 finished ones are kept
    /stops/<task id>               a request (`ps:stop`) for the leader to kill that task
    /framework/id                  {"id": …}: the Mesos FrameworkInfo id, kept across failovers
    /framework/election/…          leader election (leader.py)
    /tasks/<task id>               one znode per task the framework launched: model.Task's JSON;
                                   ids start with "<app>." so an app's tasks are found by prefix
    /apps/<name>/builds/<id>       one per `git push` build (model.Build): commit, builder, status,
                                   times, the release it made, the log's tail (≤ 256 KiB); ids
                                   are 8 hex of the start time + 4 random hex, so names sort by
                                   age; the newest 50 are kept
    /apps/<name>/releases/<N>      one znode per release, N zero-padded to 10 digits:
                                   {"version", "description", "created_by", "created_at",
                                    "artifact", "process_types", "config": "v1:<key id>:<sealed>",
                                    "op": <id of the write that made it>, "status": pending|
                                    succeeded|failed, "status_reason"}; only the status
                                   changes after the write (a release phase's outcome, by
                                   CAS); a record without one is succeeded
    /certs/<name>                  {"app", "hostnames", "issuer", "not_after", "fingerprint",
                                    "source": "manual"|"acme", "created_at", "cert": PEM chain,
                                    "key": "v1:<key id>:<sealed>"}: a TLS certificate, named by
                                   its first hostname; the key sealed like config (bound to
                                   `cert:<app>/<name>`). The router serves it for the names it
                                   lists that still route to the app.
    /acme/account                  {"directory", "uri", "key": sealed}: the ACME account
    /acme/challenges/<token>       {"key_authorization", "domain", "created_at"}: a pending
                                   HTTP-01 answer; every router serves it
    /locks/acme/…                  one ACME issuer at a time (a kazoo lock)

One small znode per app, per release, per token: never one big blob. Config lives only inside
releases, sealed by sealing.py with the app and release as associated data; the current config
is the current release's.

Consistency: every write that depends on a read is a compare-and-set. A new release is one
transaction that sets `/apps/<name>` at the version that was read and creates the next release
znode; a concurrent writer makes it fail with BadVersion/NodeExists and it is recomputed from a
fresh read, so no update is lost. A pending release (a push's release phase) is written the
same way but moves only `latest`; it goes live in one transaction that sets its status and
the app's `release` (CAS on both), and only while nothing newer was written. If the
connection drops during a commit the outcome is unknown: after reconnecting, the release
znode's `op` says whether this write landed, so a write is never applied twice nor reported
failed when it succeeded. A custom domain is added
or removed in one transaction: its /domains znode, its index entry under the app, and a CAS on
the index's data version (which also caps an app's domains exactly); destroying an app deletes
its domains in the same transaction as the app. TCP routes work the same way (their
/tcp_routes znode, the app's index, a CAS on the index). Requests made while
ZooKeeper is unreachable wait a few seconds for it, then fail with Unavailable (503); kazoo
reconnects (new session if the old one expired) in the background.

Threads: any request thread may call a Store; kazoo's own thread only runs `_on_state`, which
sets an Event. Must not import flask or any berth package but framework.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    LockTimeout,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    RolledBackError,
    SessionExpiredError,
)
from kazoo.protocol.states import KazooState

from berth.framework.certs import Certificate
from berth.framework.checks import validate_checks
from berth.framework.drainurl import (
    DRAIN_ID,
    MAX_DRAINS_PER_APP,
    Drain,
    drain_id,
    parse_url,
)
from berth.framework.errors import BerthError, Conflict, Invalid, NotFound, Unavailable
from berth.framework.model import (
    MAX_DOMAINS_PER_APP,
    MAX_ROUTES_PER_APP,
    RELEASE_FAILED,
    RELEASE_PENDING,
    RELEASE_SUCCEEDED,
    App,
    Artifact,
    Build,
    Domain,
    Release,
    Task,
    TcpRoute,
    Token,
    apply_config_changes,
    describe_config_changes,
    now,
    release_status,
    validate_domain,
    validate_formation_changes,
    validate_limits,
    validate_process_type,
    validate_proxy_protocol,
    validate_route_port,
)
from berth.framework.routing import validate_routing
from berth.framework.runs import FINISHED as RUN_FINISHED
from berth.framework.runs import KEEP_FINISHED as KEEP_FINISHED_RUNS
from berth.framework.runs import Run
from berth.framework.sealing import Sealer

log = logging.getLogger(__name__)

SCHEMA = 1
_CAS_ATTEMPTS = 50
_RELEASE_CACHE_SIZE = 512
MAX_STATUS_REASON = 500
MAX_BUILDS_PER_APP = 50
BUILD_ID = re.compile(r"^[0-9a-f]{12}$")
Op = tuple[Any, ...]


class _Retry(Exception):
    """A compare-and-set lost its race: read again and recompute."""


def _dump(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _load(raw: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(raw)
    return data


def ensure_chroot(hosts: str, chroot: str, wait: float = 15.0) -> None:
    """Create the chroot znode (kazoo cannot work under a chroot that does not exist)."""
    root = KazooClient(hosts=hosts, timeout=10.0)
    try:
        root.start(timeout=wait)
        root.ensure_path(chroot)
    except root.handler.timeout_exception:
        raise Unavailable(f"ZooKeeper at {hosts} did not answer in {wait:.0f}s") from None
    finally:
        root.stop()
        root.close()


Watcher = Callable[[Any], None]  # a kazoo watch: called with a WatchedEvent


def _release_path(app: str, version: int) -> str:
    return f"/apps/{app}/releases/{version:010d}"


@dataclass(frozen=True, slots=True)
class _Claims:
    """Names unique in the whole Berth, each owned by one app: `/<root>/<key>` holds the
    record (the router reads these), `/apps/<app>/<index>/<key>` is the app's index of its
    own, and the index's data version serialises one app's changes (Store._claim)."""

    root: str
    index: str
    limit: int
    singular: str
    plural: str


_DOMAINS = _Claims("/domains", "domains", MAX_DOMAINS_PER_APP, "domain", "custom domains")
_TCP_ROUTES = _Claims("/tcp_routes", "tcp_routes", MAX_ROUTES_PER_APP, "TCP route", "TCP routes")


class Store:
    def __init__(
        self, hosts: str, chroot: str, sealer: Sealer | None, timeout: float = 5.0
    ) -> None:
        """`sealer` None: a process that never reads or writes config or certificate keys
        (the router without HTTPS)."""
        self._hosts = hosts
        self._chroot = chroot
        self._sealer = sealer
        self._timeout = timeout
        self._connected = threading.Event()
        self._on_connected: list[Callable[[], None]] = []
        self._zk = KazooClient(
            hosts=f"{hosts}{chroot}",
            timeout=10.0,
            connection_retry={"max_tries": -1, "delay": 0.2, "max_delay": 2.0},
        )
        self._zk.add_listener(self._on_state)
        # Releases are immutable, so decoded ones are cached by (app, the app znode's creation
        # zxid, version): an app destroyed and created again under the same name never hits
        # its predecessor's entries.
        self._releases: OrderedDict[tuple[str, int, int], Release] = OrderedDict()
        # Token records by id, trusted only while `_tokens_fresh`: a children watch on /tokens
        # (and any connection change) clears it, so a revocation takes effect at once.
        self._tokens: dict[str, Token] = {}
        self._tokens_fresh = False
        self._tokens_generation = 0
        self._lock = threading.Lock()

    def _need_sealer(self) -> Sealer:
        if self._sealer is None:
            raise BerthError("this process has no config key and cannot read releases")
        return self._sealer

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, wait: float = 15.0) -> None:
        """Connect, create the chroot and the base znodes. Raises Unavailable if ZooKeeper
        cannot be reached within `wait` seconds."""
        ensure_chroot(self._hosts, self._chroot, wait)
        try:
            self._zk.start(timeout=wait)
        except self._zk.handler.timeout_exception:
            self._zk.stop()
            raise Unavailable(f"ZooKeeper at {self._hosts} did not answer in {wait:.0f}s") from None
        with self._mapped("set up the znode tree"):
            for path in (
                "/apps",
                "/tokens",
                "/tasks",
                "/framework",
                "/stops",
                "/domains",
                "/tcp_routes",
            ):
                self._zk.ensure_path(path)
            if self._zk.exists("/meta") is None:
                with suppress(NodeExistsError):
                    meta = {"schema": SCHEMA, "instance": uuid.uuid4().hex}
                    self._zk.create("/meta", _dump(meta))

    def connect_in_background(self) -> None:
        """Start connecting without waiting (the chroot must exist): requests wait for the
        connection, and `connected` says when it is there."""
        self._zk.start_async()

    def stop(self) -> None:
        self._zk.stop()
        self._zk.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _on_state(self, state: str) -> None:
        # Runs on kazoo's thread: record, never block.
        if state == KazooState.CONNECTED:
            self._connected.set()
            for signal_it in self._on_connected:
                signal_it()
        else:
            self._connected.clear()
        self._tokens_changed()
        log.info("zookeeper connection %s", state.lower(), extra={"zk_state": state})

    def when_connected(self, signal_it: Callable[[], None]) -> None:
        """Call `signal_it` (on kazoo's thread: it must only signal) each time the connection
        is (re)established: watches may have been lost with an expired session, so whoever
        relies on them reads again."""
        self._on_connected.append(signal_it)

    # -- plumbing ----------------------------------------------------------------------------

    @contextmanager
    def _mapped(self, doing: str) -> Iterator[None]:
        """Turn connection trouble into Unavailable, after giving ZooKeeper a moment to return."""
        if not self._connected.wait(self._timeout):
            raise Unavailable(f"cannot {doing}: ZooKeeper is unreachable; try again")
        try:
            yield
        except (ConnectionLoss, SessionExpiredError, ConnectionClosedError) as exc:
            raise Unavailable(
                f"cannot {doing}: lost the ZooKeeper connection ({type(exc).__name__}); try again"
            ) from None
        except self._zk.handler.timeout_exception:
            raise Unavailable(f"cannot {doing}: ZooKeeper did not answer in time") from None

    def _get(self, path: str, watch: Watcher | None = None) -> tuple[dict[str, Any], Any]:
        data, stat = self._zk.get_async(path, watch=watch).get(timeout=self._timeout)
        return _load(data), stat

    def _commit(self, ops: Sequence[Op]) -> list[Any]:
        """Run ("create"|"set_data"|"delete", path, …args) operations as one transaction;
        the results hold an exception per failed operation."""
        tx = self._zk.transaction()
        for name, *args in ops:
            getattr(tx, name)(*args)
        results: list[Any] = tx.commit_async().get(timeout=self._timeout)
        return results

    @staticmethod
    def _failure(results: list[Any]) -> Exception | None:
        """The transaction's real error (kazoo marks the other operations RolledBack)."""
        errors = [r for r in results if isinstance(r, Exception)]
        real = [e for e in errors if not isinstance(e, RolledBackError)]
        if real:
            return real[0]
        return errors[0] if errors else None

    # -- apps --------------------------------------------------------------------------------

    def create_app(self, name: str, created_by: str) -> App:
        """The app, its empty formation and release v1 ("Initial release"), atomically."""
        app = App(name=name, created_at=now(), release=1)
        v1 = Release(
            app=name,
            version=1,
            description="Initial release",
            created_by=created_by,
            created_at=app.created_at,
        )
        with self._mapped(f"create app {name}"):
            results = self._commit(
                [
                    ("create", f"/apps/{name}", _dump(app.to_json())),
                    ("create", f"/apps/{name}/formation", _dump({})),
                    ("create", f"/apps/{name}/releases", b""),
                    ("create", _release_path(name, 1), self._release_bytes(v1, uuid.uuid4().hex)),
                ]
            )
        failure = self._failure(results)
        if isinstance(failure, NodeExistsError):
            raise Conflict(f"app {name} already exists")
        if failure is not None:
            raise BerthError(f"could not create app {name}: {type(failure).__name__}")
        log.info("app created", extra={"app": name})
        return app

    def get_app(self, name: str) -> App:
        return self._app_and_stat(name)[0]

    def _app_and_stat(self, name: str) -> tuple[App, Any]:
        with self._mapped(f"read app {name}"):
            try:
                data, stat = self._get(f"/apps/{name}")
            except NoNodeError:
                raise NotFound(f"no app named {name}") from None
        return App.from_json(data), stat

    def list_apps(self, watch: Watcher | None = None, *, watch_each: bool = False) -> list[App]:
        """Every app. With `watch`, it is called once (on kazoo's thread: it must only signal)
        when the list of apps next changes; with `watch_each` too, also when an app's own znode
        changes (a release, its router settings)."""
        with self._mapped("list apps"):
            names = sorted(
                self._zk.get_children_async("/apps", watch=watch).get(timeout=self._timeout)
            )
            each = watch if watch_each else None
            pending = [self._zk.get_async(f"/apps/{n}", watch=each) for n in names]
            apps = []
            for result in pending:
                try:
                    data, _ = result.get(timeout=self._timeout)
                except NoNodeError:
                    continue  # destroyed between the listing and the read
                apps.append(App.from_json(_load(data)))
        return apps

    def destroy_app(self, name: str) -> None:
        """Delete the app and everything under it, its custom domains and TCP routes too, in
        one transaction, or nothing. A domain or route added meanwhile makes the transaction
        fail (NotEmpty), and it is retried from a fresh read."""
        for _ in range(_CAS_ATTEMPTS):
            with self._mapped(f"destroy app {name}"):
                try:
                    _, stat = self._get(f"/apps/{name}")
                    releases = self._zk.get_children_async(f"/apps/{name}/releases").get(
                        timeout=self._timeout
                    )
                    children = self._zk.get_children_async(f"/apps/{name}").get(
                        timeout=self._timeout
                    )
                except NoNodeError:
                    raise NotFound(f"no app named {name}") from None
                domains = self._app_domain_names(name) if "domains" in children else []
                ports = self._app_route_ports(name) if "tcp_routes" in children else []
                paths = [f"/apps/{name}/releases/{r}" for r in releases]
                if "builds" in children:
                    paths += [f"/apps/{name}/builds/{b}" for b in self._build_ids(name)]
                if "runs" in children:
                    paths += [f"/apps/{name}/runs/{n:010d}" for n in self._run_numbers(name)]
                for domain in domains:
                    paths += [f"/apps/{name}/domains/{domain}", f"/domains/{domain}"]
                for port in ports:
                    paths += [f"/apps/{name}/tcp_routes/{port}", f"/tcp_routes/{port}"]
                paths += [f"/apps/{name}/{c}" for c in children]
                ops: list[Op] = [("delete", path) for path in paths]
                ops.append(("delete", f"/apps/{name}", stat.version))
                failure = self._failure(self._commit(ops))
            if failure is None:
                log.info("app destroyed", extra={"app": name})
                self._remove_app_certs(name)
                return
            if not isinstance(failure, BadVersionError | NotEmptyError | NoNodeError):
                raise BerthError(f"could not destroy app {name}: {type(failure).__name__}")
        raise Conflict(f"app {name} kept changing while being destroyed; try again")

    # -- releases ----------------------------------------------------------------------------

    def _release_bytes(self, release: Release, op: str) -> bytes:
        where = f"{release.app}/v{release.version}"
        sealed = self._need_sealer().seal(_dump(dict(release.config)), where)
        return _dump(
            {
                "version": release.version,
                "description": release.description,
                "created_by": release.created_by,
                "created_at": release.created_at,
                "artifact": release.artifact.to_json() if release.artifact else None,
                "process_types": dict(release.process_types),
                "config": sealed,
                "op": op,
                "status": release.status,
                "status_reason": release.status_reason,
            }
        )

    def _release_from(self, app: str, data: dict[str, Any]) -> Release:
        version = int(data["version"])
        config = _load(self._need_sealer().open(data["config"], f"{app}/v{version}"))
        artifact = data.get("artifact")
        status, reason = release_status(data)
        return Release(
            app=app,
            version=version,
            description=data["description"],
            created_by=data["created_by"],
            created_at=data["created_at"],
            config=config,
            artifact=Artifact.from_json(artifact) if artifact else None,
            process_types=data.get("process_types") or {},
            status=status,
            status_reason=reason,
        )

    def get_release(self, app: str, version: int | None = None) -> Release:
        """Release vN of the app, or its current one (the one that runs)."""
        if version is None:
            current, stat = self._app_and_stat(app)
            return self._cached_release(app, stat.czxid, current.release)
        with self._mapped(f"read release v{version} of {app}"):
            try:
                data, _ = self._get(_release_path(app, version))
            except NoNodeError:
                self.get_app(app)  # NotFound for the app itself comes first
                raise NotFound(f"app {app} has no release v{version}") from None
        return self._release_from(app, data)

    def list_releases(self, app: str, limit: int = 15) -> list[Release]:
        """The newest `limit` releases, newest first: pending and failed ones too."""
        newest = self.get_app(app).newest
        versions = range(newest, max(newest - limit, 0), -1)
        with self._mapped(f"list releases of {app}"):
            pending = [self._zk.get_async(_release_path(app, v)) for v in versions]
            releases = []
            for result in pending:
                try:
                    data, _ = result.get(timeout=self._timeout)
                except NoNodeError:
                    continue
                releases.append(self._release_from(app, _load(data)))
        return releases

    def _cached_release(self, app: str, czxid: int, version: int) -> Release:
        """A release the app's `release` names: it went live, so nothing in it changes
        again and it may be cached."""
        key = (app, czxid, version)
        with self._lock:
            cached = self._releases.get(key)
            if cached is not None:
                self._releases.move_to_end(key)
                return cached
        with self._mapped(f"read release v{version} of {app}"):
            try:
                data, _ = self._get(_release_path(app, version))
            except NoNodeError:
                raise NotFound(f"no app named {app}") from None  # destroyed meanwhile
        release = self._release_from(app, data)
        self._remember(key, release)
        return release

    def _remember(self, key: tuple[str, int, int], release: Release) -> None:
        with self._lock:
            self._releases[key] = release
            while len(self._releases) > _RELEASE_CACHE_SIZE:
                self._releases.popitem(last=False)

    def _append_release(
        self, app: str, make: Callable[[Release], Release], *, pending: bool = False
    ) -> Release:
        """Write the next release, computed by `make` from the current one, as a CAS on the app.
        It goes live at once (the app's `release` names it), or, `pending`, it is only written
        (`latest` names it) until `finish_release` says how its release phase went.

        `make` is re-run on a fresh read whenever another writer got there first."""
        for _ in range(_CAS_ATTEMPTS):
            op = uuid.uuid4().hex
            current, stat = self._app_and_stat(app)
            base = self._cached_release(app, stat.czxid, current.release)
            release = make(base)
            release = replace(
                release,
                app=app,
                version=current.newest + 1,
                created_at=now(),
                status=RELEASE_PENDING if pending else RELEASE_SUCCEEDED,
                status_reason="",
            )
            if pending:
                updated = replace(current, latest=release.version)
            else:
                updated = replace(current, release=release.version, latest=None)
            try:
                with self._mapped(f"write release v{release.version} of {app}"):
                    results = self._commit(
                        [
                            ("set_data", f"/apps/{app}", _dump(updated.to_json()), stat.version),
                            (
                                "create",
                                _release_path(app, release.version),
                                self._release_bytes(release, op),
                            ),
                        ]
                    )
            except Unavailable:
                if self._landed(app, release.version, op):
                    return release
                raise
            failure = self._failure(results)
            if failure is None:
                if not pending:
                    self._remember((app, stat.czxid, release.version), release)
                log.info(
                    "release created",
                    extra={
                        "app": app,
                        "release": release.version,
                        "by": release.created_by,
                        "status": release.status,
                    },
                )
                return release
            if isinstance(failure, NoNodeError):
                raise NotFound(f"no app named {app}")
            if not isinstance(failure, BadVersionError | NodeExistsError):
                raise BerthError(f"could not write a release of {app}: {type(failure).__name__}")
        raise Conflict(f"app {app} is changing too fast to write a release; try again")

    def _landed(self, app: str, version: int, op: str) -> bool:
        """After a commit whose answer was lost: did it happen? Waits for the connection; if
        ZooKeeper stays away the write was never acknowledged, and Unavailable is raised."""
        with self._mapped(f"check whether release v{version} of {app} was written"):
            try:
                data, _ = self._get(_release_path(app, version))
            except NoNodeError:
                return False
        return bool(data.get("op") == op)

    def set_config(self, app: str, changes: dict[str, str | None], created_by: str) -> Release:
        """A new release with the config changed (None unsets a key)."""
        description = describe_config_changes(changes)

        def make(newest: Release) -> Release:
            return replace(
                newest,
                config=apply_config_changes(newest.config, changes),
                description=description,
                created_by=created_by,
            )

        return self._append_release(app, make)

    def deploy(
        self,
        app: str,
        artifact: Artifact,
        process_types: Mapping[str, str],
        description: str,
        created_by: str,
        *,
        pending: bool = False,
    ) -> Release:
        """A new release running `artifact`, keeping the current config. `pending`: it does
        not go live yet (its release phase runs first; then `finish_release`)."""

        def make(newest: Release) -> Release:
            return replace(
                newest,
                artifact=artifact,
                process_types=dict(process_types),
                description=description,
                created_by=created_by,
            )

        return self._append_release(app, make, pending=pending)

    def finish_release(self, app: str, version: int, succeeded: bool, reason: str) -> Release:
        """The outcome of pending release vN's release phase. Succeeded: it becomes the app's
        current release in one transaction with its status — but only while it is still the
        newest release written; if another was made meanwhile (a config change, a rollback)
        it is failed instead, as superseded, and the current release stays. Failed: the
        status only; the current release stays. Returns the release as it now is (a release
        no longer pending is returned unchanged)."""
        path = _release_path(app, version)
        for _ in range(_CAS_ATTEMPTS):
            current, stat = self._app_and_stat(app)
            with self._mapped(f"read release v{version} of {app}"):
                try:
                    data, rstat = self._get(path)
                except NoNodeError:
                    raise NotFound(f"app {app} has no release v{version}") from None
            if release_status(data)[0] != RELEASE_PENDING:
                return self._release_from(app, data)
            ops: list[Op] = []
            if succeeded and current.newest == version:
                data.update(status=RELEASE_SUCCEEDED, status_reason="")
                live = replace(current, release=version, latest=None)
                ops.append(("set_data", f"/apps/{app}", _dump(live.to_json()), stat.version))
            else:
                if succeeded:
                    newer = self.get_release(app, current.newest)
                    reason = (
                        f"superseded: v{newer.version} ({newer.description}) was made while"
                        " its release command ran"
                    )
                data.update(status=RELEASE_FAILED, status_reason=reason[:MAX_STATUS_REASON])
            ops.append(("set_data", path, _dump(data), rstat.version))
            try:
                with self._mapped(f"finish release v{version} of {app}"):
                    failure = self._failure(self._commit(ops))
            except Unavailable:
                continue  # the answer was lost: read again (a finished status says it landed)
            if failure is None:
                release = self._release_from(app, data)
                if release.status == RELEASE_SUCCEEDED:
                    self._remember((app, stat.czxid, version), release)
                log.info(
                    "release finished",
                    extra={"app": app, "release": version, "status": release.status},
                )
                return release
            if isinstance(failure, NoNodeError):
                raise NotFound(f"no app named {app}")
            if not isinstance(failure, BadVersionError):
                raise BerthError(f"could not finish release v{version} of {app}: {failure!r}")
        raise Conflict(f"app {app} is changing too fast to finish release v{version}; try again")

    def fail_pending_releases(self, app: str, reason: str, look_back: int = 15) -> list[int]:
        """Fail the app's pending releases among its newest `look_back`: the push that ran
        their release phase ended without finishing them (the API stopped). Only the one
        running that app's pushes may call this, under its push lock."""
        failed = []
        for release in self.list_releases(app, look_back):
            if release.status == RELEASE_PENDING:
                self.finish_release(app, release.version, False, reason)
                failed.append(release.version)
        return failed

    def rollback_target(self, app: str, version: int | None) -> Release:
        """The release `rollback` would copy: vN, or by default the newest release before the
        current one that went live. Conflict for a release that never went live."""
        if version is None:
            current = self.get_app(app).release
            for candidate in range(current - 1, 0, -1):
                release = self.get_release(app, candidate)
                if release.status == RELEASE_SUCCEEDED:
                    return release
            raise Conflict(f"app {app} has only v{current}: there is no earlier release")
        target = self.get_release(app, version)
        if target.status == RELEASE_PENDING:
            raise Conflict(
                f"v{version} of {app} is still running its release command: it is not live yet"
            )
        if target.status == RELEASE_FAILED:
            why = f" ({target.status_reason})" if target.status_reason else ""
            raise Conflict(
                f"v{version} of {app} never went live{why}: roll back to a release that did"
            )
        return target

    def rollback(
        self,
        app: str,
        version: int | None,
        created_by: str,
        *,
        description: str | None = None,
        only_if_newest: int | None = None,
    ) -> Release:
        """A new release copying vN's artifact, config and process types (default: the newest
        release before the current one that went live; never one whose release phase failed
        or is pending: `rollback_target`). With `only_if_newest`, Conflict unless that is
        still the current release (the framework rolls back a failed deploy only if nobody
        deployed since)."""
        target = self.rollback_target(app, version)

        def make(newest: Release) -> Release:
            if only_if_newest is not None and newest.version != only_if_newest:
                raise Conflict(f"app {app} has v{newest.version} now, not v{only_if_newest}")
            return replace(
                target,
                description=description or f"Rollback to v{target.version}",
                created_by=created_by,
            )

        return self._append_release(app, make)

    # -- builds ------------------------------------------------------------------------------

    def _build_ids(self, app: str) -> list[str]:
        try:
            ids = self._zk.get_children_async(f"/apps/{app}/builds").get(timeout=self._timeout)
        except NoNodeError:
            return []
        return sorted(ids)

    def put_build(self, build: Build) -> None:
        """Create or overwrite a build's znode (one writer: the push that runs it). Creating
        one drops the oldest beyond MAX_BUILDS_PER_APP."""
        path = f"/apps/{build.app}/builds/{build.id}"
        data = _dump(build.to_json())
        with self._mapped(f"write build {build.id} of {build.app}"):
            try:
                self._zk.set_async(path, data).get(timeout=self._timeout)
                return
            except NoNodeError:
                pass
            try:
                self._zk.create_async(f"/apps/{build.app}/builds", b"").get(timeout=self._timeout)
            except NodeExistsError:
                pass
            except NoNodeError:
                raise NotFound(f"no app named {build.app}") from None
            try:
                self._zk.create_async(path, data).get(timeout=self._timeout)
            except NoNodeError:
                raise NotFound(f"no app named {build.app}") from None
            for old in self._build_ids(build.app)[:-MAX_BUILDS_PER_APP]:
                with suppress(NoNodeError):
                    self._zk.delete_async(f"/apps/{build.app}/builds/{old}").get(
                        timeout=self._timeout
                    )

    def get_build(self, app: str, build_id: str) -> Build:
        if not BUILD_ID.fullmatch(build_id):
            raise Invalid(f"invalid build id {build_id[:40]!r}: expected 12 hex digits")
        with self._mapped(f"read build {build_id} of {app}"):
            try:
                data, _ = self._get(f"/apps/{app}/builds/{build_id}")
            except NoNodeError:
                self.get_app(app)  # NotFound for the app itself comes first
                raise NotFound(f"app {app} has no build {build_id}") from None
        return Build.from_json(data)

    def list_builds(self, app: str, limit: int = 15) -> list[Build]:
        """The newest `limit` builds, newest first, without their logs."""
        self.get_app(app)
        with self._mapped(f"list builds of {app}"):
            ids = self._build_ids(app)[::-1][:limit]
            pending = [self._zk.get_async(f"/apps/{app}/builds/{i}") for i in ids]
            builds = []
            for result in pending:
                try:
                    raw, _ = result.get(timeout=self._timeout)
                except NoNodeError:
                    continue
                builds.append(replace(Build.from_json(_load(raw)), log=""))
        return builds

    # -- formation ---------------------------------------------------------------------------

    def get_formation(self, app: str, watch: Watcher | None = None) -> dict[str, int]:
        """`watch` (kazoo's thread; it must only signal) is called when the formation changes."""
        with self._mapped(f"read the formation of {app}"):
            try:
                data, _ = self._get(f"/apps/{app}/formation", watch)
            except NoNodeError:
                raise NotFound(f"no app named {app}") from None
        return {k: int(v) for k, v in data.items()}

    def scale(self, app: str, changes: object) -> dict[str, int]:
        """Merge `changes` into the formation (CAS), validated against the newest release."""
        process_types = self.get_release(app).process_types
        checked = validate_formation_changes(changes, process_types)
        for _ in range(_CAS_ATTEMPTS):
            with self._mapped(f"scale {app}"):
                try:
                    data, stat = self._get(f"/apps/{app}/formation")
                except NoNodeError:
                    raise NotFound(f"no app named {app}") from None
                formation = {**data, **checked}
                try:
                    self._zk.set_async(
                        f"/apps/{app}/formation", _dump(formation), version=stat.version
                    ).get(timeout=self._timeout)
                except BadVersionError:
                    continue
                except NoNodeError:
                    raise NotFound(f"no app named {app}") from None
            log.info("formation changed", extra={"app": app, "formation": formation})
            return {k: int(v) for k, v in formation.items()}
        raise Conflict(f"the formation of {app} is changing too fast; try again")

    def instance_id(self) -> str:
        """This Berth's id (one per chroot), created with the znode tree."""
        with self._mapped("read the instance id"):
            data, stat = self._get("/meta")
            if "instance" not in data:  # a tree made before instance ids existed
                data["instance"] = uuid.uuid4().hex
                try:
                    self._zk.set("/meta", _dump(data), version=stat.version)
                except BadVersionError:
                    data, _ = self._get("/meta")
        return str(data["instance"])

    # -- framework and tasks (written only by the leading `berth framework`) ----------------

    def framework_id(self) -> str | None:
        with self._mapped("read the framework id"):
            try:
                data, _ = self._get("/framework/id")
            except NoNodeError:
                return None
        value = data.get("id")
        return str(value) if value else None

    def set_framework_id(self, value: str | None) -> None:
        """Remember the id Mesos gave (None forgets it, after the master removed the framework)."""
        with self._mapped("save the framework id"):
            if value is None:
                with suppress(NoNodeError):
                    self._zk.delete("/framework/id")
                return
            data = _dump({"id": value})
            try:
                self._zk.set_async("/framework/id", data).get(timeout=self._timeout)
            except NoNodeError:
                self._zk.create_async("/framework/id", data).get(timeout=self._timeout)

    def put_task(self, task: Task) -> None:
        with self._mapped(f"save task {task.id}"):
            data = _dump(task.to_json())
            try:
                self._zk.set_async(f"/tasks/{task.id}", data).get(timeout=self._timeout)
            except NoNodeError:
                self._zk.create_async(f"/tasks/{task.id}", data).get(timeout=self._timeout)

    def delete_task(self, task_id: str) -> None:
        with self._mapped(f"forget task {task_id}"), suppress(NoNodeError):
            self._zk.delete_async(f"/tasks/{task_id}").get(timeout=self._timeout)

    def list_tasks(self, app: str | None = None, watch: Watcher | None = None) -> list[Task]:
        """Every task record, or an app's, sorted by process, index and id. With `watch`, it
        is called once (on kazoo's thread: it must only signal) when a task next appears,
        changes or goes: one-shot watches, so a reader re-arms them by reading again."""
        with self._mapped("list tasks"):
            ids = self._zk.get_children_async("/tasks", watch=watch).get(timeout=self._timeout)
            if app is not None:
                ids = [i for i in ids if i.startswith(f"{app}.")]
            pending = [self._zk.get_async(f"/tasks/{i}", watch=watch) for i in ids]
            tasks = []
            for result in pending:
                try:
                    data, _ = result.get(timeout=self._timeout)
                except NoNodeError:
                    continue
                task = Task.from_json(_load(data))
                if app is None or task.app == app:
                    tasks.append(task)
        return sorted(tasks, key=lambda t: (t.app, t.process, t.index, t.id))

    # -- limits, restarts, stops -------------------------------------------------------------

    def _read_map(
        self, path: str, doing: str, watch: Watcher | None = None
    ) -> tuple[dict[str, Any], int]:
        """A small JSON map znode and its version; an absent one (older apps) is empty (-1),
        and is not watched."""
        with self._mapped(doing):
            try:
                data, stat = self._get(path, watch)
            except NoNodeError:
                return {}, -1
        return data, stat.version

    def _merge_map(self, app: str, name: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """CAS-merge `changes` into /apps/<app>/<name> (a None value removes its key);
        NotFound if the app is gone."""
        path = f"/apps/{app}/{name}"
        for _ in range(_CAS_ATTEMPTS):
            self.get_app(app)
            data, version = self._read_map(path, f"read {name} of {app}")
            merged = {k: v for k, v in {**data, **changes}.items() if v is not None}
            with self._mapped(f"change {name} of {app}"):
                try:
                    if version < 0:
                        self._zk.create_async(path, _dump(merged)).get(timeout=self._timeout)
                    else:
                        self._zk.set_async(path, _dump(merged), version=version).get(
                            timeout=self._timeout
                        )
                except (BadVersionError, NodeExistsError):
                    continue
                except NoNodeError:
                    raise NotFound(f"no app named {app}") from None
            return merged
        raise Conflict(f"{name} of {app} are changing too fast; try again")

    def get_limits(self, app: str, watch: Watcher | None = None) -> dict[str, dict[str, float]]:
        self.get_app(app)
        return self._read_map(f"/apps/{app}/limits", f"read limits of {app}", watch)[0]

    def set_limits(self, app: str, changes: object) -> dict[str, dict[str, float]]:
        """Validated against the newest release's process types; merged per type."""
        checked = validate_limits(changes, self.get_release(app).process_types)
        current = self.get_limits(app)
        merged = {p: {**current.get(p, {}), **lim} for p, lim in checked.items()}
        return self._merge_map(app, "limits", merged)

    def set_routing(self, app: str, changes: object) -> App:
        """Change the app's router settings (routing.py): a CAS on the app's znode, which is
        where the router reads them."""
        checked = validate_routing(changes)
        for _ in range(_CAS_ATTEMPTS):
            current, stat = self._app_and_stat(app)
            updated = replace(current, **checked)
            with self._mapped(f"change routing of {app}"):
                try:
                    self._zk.set_async(
                        f"/apps/{app}", _dump(updated.to_json()), version=stat.version
                    ).get(timeout=self._timeout)
                except BadVersionError:
                    continue
                except NoNodeError:
                    raise NotFound(f"no app named {app}") from None
            return updated
        raise Conflict(f"app {app} is changing too fast; try again")

    def get_checks(self, app: str) -> dict[str, Any]:
        """What `checks:set` stored per process type (framework/checks.py reads it)."""
        return self._read_map(f"/apps/{app}/checks", f"read checks of {app}")[0]

    def set_checks(self, app: str, changes: object) -> dict[str, Any]:
        """Validated against the newest release's process types; None resets a type."""
        checked = validate_checks(changes, self.get_release(app).process_types)
        return self._merge_map(app, "checks", checked)

    def get_restarts(self, app: str, watch: Watcher | None = None) -> dict[str, float]:
        return self._read_map(f"/apps/{app}/restarts", f"read restarts of {app}", watch)[0]

    def request_restart(self, app: str, process_types: list[str], at: float) -> None:
        """Tasks of these types launched before `at` are replaced, new before old."""
        self._merge_map(app, "restarts", dict.fromkeys(process_types, at))

    def request_stop(self, task_id: str) -> None:
        with self._mapped(f"ask to stop {task_id}"), suppress(NodeExistsError):
            self._zk.create_async(f"/stops/{task_id}", b"").get(timeout=self._timeout)

    def stop_requests(self) -> list[str]:
        with self._mapped("read stop requests"):
            return sorted(self._zk.get_children_async("/stops").get(timeout=self._timeout))

    def clear_stop(self, task_id: str) -> None:
        with self._mapped(f"clear the stop request of {task_id}"), suppress(NoNodeError):
            self._zk.delete_async(f"/stops/{task_id}").get(timeout=self._timeout)

    # -- one-off runs (framework/runs.py) ------------------------------------------------------

    def _run_numbers(self, app: str, watch: Watcher | None = None) -> list[int]:
        try:
            names = self._zk.get_children_async(f"/apps/{app}/runs", watch=watch).get(
                timeout=self._timeout
            )
        except NoNodeError:
            return []
        return sorted(int(n) for n in names if n.isdigit())

    def create_run(
        self,
        app: str,
        command: Sequence[str],
        *,
        attach: bool,
        tty: bool,
        memory_mb: int,
        cpus: float,
        created_by: str,
        secret: str,
        release_version: int | None = None,
    ) -> Run:
        """A pending run of the app's current release (or of release `release_version`: a
        push's release phase runs from its pending release), numbered from the app's run
        counter (`/apps/<app>/runs` data, CAS) in one transaction with its znode. Conflict if
        the app has nothing to run yet. Finished runs beyond KEEP_FINISHED are dropped, oldest
        first."""
        release = self.get_release(app, release_version)
        if release.artifact is None:
            raise Conflict(f"{app} has no build to run yet: push or deploy first")
        for _ in range(_CAS_ATTEMPTS):
            with self._mapped(f"create a run of {app}"):
                try:
                    counter, stat = self._get(f"/apps/{app}/runs")
                except NoNodeError:
                    self.get_app(app)
                    with suppress(NodeExistsError):
                        self._zk.create_async(f"/apps/{app}/runs", _dump({"next": 1})).get(
                            timeout=self._timeout
                        )
                    continue
                number = int(counter.get("next", 1))
                run = Run(
                    app=app,
                    number=number,
                    command=tuple(command),
                    release=release.version,
                    attach=attach,
                    tty=tty,
                    memory_mb=memory_mb,
                    cpus=cpus,
                    created_by=created_by,
                    created_at=now(),
                    secret=self._need_sealer().seal(secret.encode(), f"run:{app}/{number}"),
                )
                failure = self._failure(
                    self._commit(
                        [
                            (
                                "set_data",
                                f"/apps/{app}/runs",
                                _dump({"next": number + 1}),
                                stat.version,
                            ),
                            ("create", f"/apps/{app}/runs/{number:010d}", _dump(run.to_json())),
                        ]
                    )
                )
            if failure is None:
                self._trim_runs(app)
                log.info("run created", extra={"app": app, "run": number})
                return run
            if isinstance(failure, NoNodeError):
                raise NotFound(f"no app named {app}")
            if not isinstance(failure, BadVersionError | NodeExistsError):
                raise BerthError(f"could not create a run of {app}: {type(failure).__name__}")
        raise Conflict(f"runs of {app} are being created too fast; try again")

    def _trim_runs(self, app: str) -> None:
        with self._mapped(f"drop old runs of {app}"):
            finished = [r for r in self.list_runs(app) if r.state == RUN_FINISHED]
            for run in finished[:-KEEP_FINISHED_RUNS]:
                with suppress(NoNodeError):
                    self._zk.delete_async(f"/apps/{app}/runs/{run.number:010d}").get(
                        timeout=self._timeout
                    )

    def get_run(self, app: str, number: int) -> Run:
        with self._mapped(f"read run {number} of {app}"):
            try:
                data, _ = self._get(f"/apps/{app}/runs/{number:010d}")
            except NoNodeError:
                self.get_app(app)
                raise NotFound(f"{app} has no run.{number}") from None
        return Run.from_json(data)

    def list_runs(
        self, app: str, skip: Collection[int] = (), watch: Watcher | None = None
    ) -> list[Run]:
        """The app's run records, oldest first (none for an app that never ran one); those
        numbered in `skip` are not read (the scheduler skips runs it knows are finished).
        `watch` is called when a run is added or removed (once the app has had one)."""
        with self._mapped(f"list runs of {app}"):
            numbers = [n for n in self._run_numbers(app, watch) if n not in skip]
            pending = [self._zk.get_async(f"/apps/{app}/runs/{n:010d}") for n in numbers]
            runs = []
            for result in pending:
                try:
                    raw, _ = result.get(timeout=self._timeout)
                except NoNodeError:
                    continue
                runs.append(Run.from_json(_load(raw)))
        return runs

    def change_run(self, app: str, number: int, change: Callable[[Run], Run | None]) -> Run | None:
        """CAS: `change` gets the current record and returns the new one (None: leave it).
        None if the run (or its app) is gone."""
        path = f"/apps/{app}/runs/{number:010d}"
        for _ in range(_CAS_ATTEMPTS):
            with self._mapped(f"change run {number} of {app}"):
                try:
                    data, stat = self._get(path)
                except NoNodeError:
                    return None
                current = Run.from_json(data)
                changed = change(current)
                if changed is None:
                    return current
                try:
                    self._zk.set_async(path, _dump(changed.to_json()), version=stat.version).get(
                        timeout=self._timeout
                    )
                except BadVersionError:
                    continue
                except NoNodeError:
                    return None
            return changed
        raise Conflict(f"run {number} of {app} is changing too fast; try again")

    def run_secret(self, run: Run) -> str:
        """The run's secret in clear ("" once finished): the framework gives it to the
        executor, the API compares what the executor presents with it."""
        if not run.secret:
            return ""
        sealed = self._need_sealer().open(run.secret, f"run:{run.app}/{run.number}")
        return sealed.decode()

    # -- custom domains ----------------------------------------------------------------------

    def _app_domain_names(self, app: str) -> list[str]:
        """The app's index of its domains; empty when it never had one (or is gone)."""
        try:
            names: list[str] = self._zk.get_children_async(f"/apps/{app}/domains").get(
                timeout=self._timeout
            )
        except NoNodeError:
            return []
        return names

    def _read_all(self, parent: str, names: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
        """(name, record) of `parent`'s children `names`, read concurrently, in the order
        given; one removed between the listing and the read is left out. Call it inside
        `_mapped`."""
        pending = [(n, self._zk.get_async(f"{parent}/{n}")) for n in names]
        found = []
        for name, result in pending:
            try:
                data, _ = result.get(timeout=self._timeout)
            except NoNodeError:
                continue
            found.append((name, _load(data)))
        return found

    def _record(self, path: str) -> tuple[dict[str, Any], Any] | None:
        try:
            return self._get(path)
        except NoNodeError:
            return None

    def _claim(
        self,
        claims: _Claims,
        app: str,
        key: str,
        prepare: Callable[[], dict[str, Any]],
        taken: Callable[[object], str],
        doing: str,
    ) -> dict[str, Any]:
        """Make `key` the app's in `claims` (a domain, a router port): one transaction that
        creates `/<root>/<key>` (the record `prepare()` returns, plus an op id), the app's index
        entry, and a CAS on the index's data version, which serialises one app's changes and
        makes the cap exact. `prepare` runs on every attempt (it raises NotFound, Invalid);
        Conflict with `taken(owner)` if any app has the key. Returns the record written."""
        index = f"/apps/{app}/{claims.index}"
        for _ in range(_CAS_ATTEMPTS):
            record = {**prepare(), "app": app, "op": uuid.uuid4().hex}
            with self._mapped(doing):
                found = self._record(f"{claims.root}/{key}")
                if found is not None:
                    raise Conflict(taken(found[0].get("app")))
                try:
                    names, stat = self._zk.get_children_async(index, include_data=True).get(
                        timeout=self._timeout
                    )
                except NoNodeError:
                    names, stat = [], None
                if len(names) >= claims.limit:
                    raise Invalid(
                        f"app {app} has {len(names)} {claims.plural}; the limit is"
                        f" {claims.limit}: remove one first"
                    )
                guard: Op = (
                    ("create", index, b"")
                    if stat is None
                    else ("set_data", index, b"", stat.version)
                )
                ops: list[Op] = [
                    guard,
                    ("create", f"{index}/{key}", b""),
                    ("create", f"{claims.root}/{key}", _dump(record)),
                ]
            try:
                with self._mapped(doing):
                    failure = self._failure(self._commit(ops))
            except Unavailable:  # the answer was lost: did this attempt land?
                with self._mapped(f"check whether {claims.singular} {key} was added"):
                    after = self._record(f"{claims.root}/{key}")
                if after is not None and after[0].get("op") == record["op"]:
                    return record
                raise
            if failure is None:
                return record
            # a concurrent change to the app's index, the key taken meanwhile, the app
            # destroyed: read again, which says which
            if not isinstance(failure, BadVersionError | NodeExistsError | NoNodeError):
                raise BerthError(f"could not add {claims.singular} {key}: {type(failure).__name__}")
        raise Conflict(f"the {claims.plural} of {app} are changing too fast; try again")

    def _unclaim(self, claims: _Claims, app: str, key: str, missing: str) -> dict[str, Any]:
        """Give up the app's `key` (NotFound with `missing` unless the app has it: another
        app's is never touched); returns the record removed."""
        index = f"/apps/{app}/{claims.index}"
        doing = f"remove {claims.singular} {key} from {app}"
        for _ in range(_CAS_ATTEMPTS):
            self.get_app(app)
            with self._mapped(doing):
                found = self._record(f"{claims.root}/{key}")
                if found is None or found[0].get("app") != app:
                    raise NotFound(missing)
                try:
                    _, index_stat = self._zk.get_async(index).get(timeout=self._timeout)
                except NoNodeError:
                    continue  # the app is being destroyed: read again
                ops: list[Op] = [
                    ("set_data", index, b"", index_stat.version),
                    ("delete", f"{index}/{key}"),
                    ("delete", f"{claims.root}/{key}", found[1].version),
                ]
            try:
                with self._mapped(doing):
                    failure = self._failure(self._commit(ops))
            except Unavailable:
                with self._mapped(f"check whether {claims.singular} {key} was removed"):
                    after = self._record(f"{claims.root}/{key}")
                if after is None or after[0].get("app") != app:
                    return found[0]  # it landed (or the app went): the app has it no more
                raise
            if failure is None:
                return found[0]
            if not isinstance(failure, BadVersionError | NoNodeError):
                raise BerthError(
                    f"could not remove {claims.singular} {key}: {type(failure).__name__}"
                )
        raise Conflict(f"the {claims.plural} of {app} are changing too fast; try again")

    def add_domain(self, app: str, hostname: str) -> Domain:
        """Route `hostname` (checked by model.validate_domain) to the app. Conflict if this app
        or another one already has it; Invalid past MAX_DOMAINS_PER_APP."""
        hostname = validate_domain(hostname)

        def prepare() -> dict[str, Any]:
            self.get_app(app)  # NotFound for the app comes first
            return {"created_at": now()}

        def taken(owner: object) -> str:
            if owner == app:
                return f"domain {hostname} is already added to {app}"
            return f"domain {hostname} is already used by app {owner}"

        record = self._claim(
            _DOMAINS, app, hostname, prepare, taken, f"add domain {hostname} to {app}"
        )
        log.info("domain added", extra={"app": app, "domain": hostname})
        return Domain(hostname=hostname, app=app, created_at=record["created_at"])

    def remove_domain(self, app: str, hostname: str) -> None:
        """Stop routing `hostname` to the app. NotFound unless the app has it: another app's
        domain is never touched."""
        hostname = validate_domain(hostname)
        self._unclaim(_DOMAINS, app, hostname, f"app {app} has no domain {hostname}")
        log.info("domain removed", extra={"app": app, "domain": hostname})

    def domains(self, app: str) -> list[Domain]:
        """The app's custom domains, sorted by hostname."""
        with self._mapped(f"list the domains of {app}"):
            names = self._app_domain_names(app)
            found = [
                Domain(hostname=name, app=app, created_at=record["created_at"])
                for name, record in self._read_all("/domains", sorted(names))
                if record.get("app") == app
            ]
        if not names:
            self.get_app(app)  # NotFound for an unknown app
        return found

    def all_domains(self, watch: Watcher | None = None) -> dict[str, str]:
        """Every custom domain → its app, for the router. With `watch`, it is called once (on
        kazoo's thread: it must only signal) when a domain is next added or removed; a
        domain's znode is never changed in place, so the children watch is enough."""
        with self._mapped("list custom domains"):
            names = self._zk.get_children_async("/domains", watch=watch).get(timeout=self._timeout)
            return {name: str(r["app"]) for name, r in self._read_all("/domains", sorted(names))}

    # -- TCP routes --------------------------------------------------------------------------

    def _app_route_ports(self, app: str) -> list[int]:
        """The app's index of its TCP routes; empty when it never had one (or is gone)."""
        try:
            names: list[str] = self._zk.get_children_async(f"/apps/{app}/tcp_routes").get(
                timeout=self._timeout
            )
        except NoNodeError:
            return []
        return sorted(int(n) for n in names if n.isdigit())

    @staticmethod
    def _route_from(port: int, data: Mapping[str, Any]) -> TcpRoute:
        return TcpRoute(
            port=port,
            app=str(data["app"]),
            process=str(data["process"]),
            proxy_protocol=data.get("proxy_protocol"),
            created_at=str(data["created_at"]),
        )

    def add_tcp_route(
        self, app: str, port: object, process: object, proxy_protocol: object = None
    ) -> TcpRoute:
        """Expose the app's `process` tasks on router `port`. Invalid for a bad port, process
        type or PROXY protocol version, or past MAX_ROUTES_PER_APP; Conflict if any app has a
        route on that port already."""
        port = validate_route_port(port)
        proxy = validate_proxy_protocol(proxy_protocol)

        def prepare() -> dict[str, Any]:
            # NotFound for the app comes first; then the process type against its release
            ptype = validate_process_type(process, self.get_release(app).process_types)
            return {"process": ptype, "proxy_protocol": proxy, "created_at": now()}

        def taken(owner: object) -> str:
            if owner == app:
                return f"app {app} already has a TCP route on port {port}"
            return f"port {port} is already routed to app {owner}"

        record = self._claim(
            _TCP_ROUTES, app, str(port), prepare, taken, f"add TCP route {port} to {app}"
        )
        route = self._route_from(port, record)
        log.info(
            "tcp route added",
            extra={
                "app": app,
                "port": port,
                "process_type": route.process,
                "proxy_protocol": proxy,
            },
        )
        return route

    def remove_tcp_route(self, app: str, port: object) -> TcpRoute:
        """Stop routing `port` to the app; returns the route removed. NotFound unless the app
        has a route there: another app's route is never touched."""
        port = validate_route_port(port)
        record = self._unclaim(
            _TCP_ROUTES, app, str(port), f"app {app} has no TCP route on port {port}"
        )
        log.info("tcp route removed", extra={"app": app, "port": port})
        return self._route_from(port, record)

    def tcp_routes(self, app: str) -> list[TcpRoute]:
        """The app's TCP routes, sorted by port."""
        with self._mapped(f"list the TCP routes of {app}"):
            ports = self._app_route_ports(app)
            found = [
                self._route_from(int(port), record)
                for port, record in self._read_all("/tcp_routes", map(str, ports))
                if record.get("app") == app
            ]
        if not ports:
            self.get_app(app)  # NotFound for an unknown app
        return found

    def all_tcp_routes(self, watch: Watcher | None = None) -> list[TcpRoute]:
        """Every TCP route, sorted by port, for the router. With `watch`, it is called once (on
        kazoo's thread: it must only signal) when a route is next added or removed; a route's
        znode is never changed in place, so the children watch is enough."""
        with self._mapped("list TCP routes"):
            names = self._zk.get_children_async("/tcp_routes", watch=watch).get(
                timeout=self._timeout
            )
            ports = sorted(int(n) for n in names if n.isdigit())
            return [
                self._route_from(int(port), record)
                for port, record in self._read_all("/tcp_routes", map(str, ports))
            ]

    # -- log drains --------------------------------------------------------------------------

    def drains(self, app: str) -> list[Drain]:
        """The app's log drains, in the order they were added; NotFound for an unknown app."""
        self.get_app(app)
        data, _ = self._read_map(f"/apps/{app}/drains", f"read drains of {app}")
        return [Drain.from_json(d) for d in data.get("drains", [])]

    def _change_drains(self, app: str, change: Callable[[list[Drain]], list[Drain]]) -> None:
        """CAS `change` (which may raise) over /apps/<app>/drains; NotFound if the app is gone."""
        path = f"/apps/{app}/drains"
        for _ in range(_CAS_ATTEMPTS):
            self.get_app(app)
            data, version = self._read_map(path, f"read drains of {app}")
            changed = change([Drain.from_json(d) for d in data.get("drains", [])])
            raw = _dump({"drains": [d.to_json() for d in changed]})
            with self._mapped(f"change drains of {app}"):
                try:
                    if version < 0:
                        self._zk.create_async(path, raw).get(timeout=self._timeout)
                    else:
                        self._zk.set_async(path, raw, version=version).get(timeout=self._timeout)
                except (BadVersionError, NodeExistsError):
                    continue
                except NoNodeError:
                    raise NotFound(f"no app named {app}") from None
            return
        raise Conflict(f"drains of {app} are changing too fast; try again")

    def add_drain(self, app: str, url: object) -> Drain:
        """Add a drain (drainurl.parse_url checks the URL: Invalid, nothing stored); Conflict
        if the app has it already; Invalid past MAX_DRAINS_PER_APP."""
        drain = Drain.new(url, now())

        def change(current: list[Drain]) -> list[Drain]:
            if any(d.id == drain.id for d in current):
                raise Conflict(f"{app} already has the drain {drain.target.display}")
            if len(current) >= MAX_DRAINS_PER_APP:
                raise Invalid(
                    f"{app} has {MAX_DRAINS_PER_APP} drains already, the most an app may have:"
                    " remove one first"
                )
            return [*current, drain]

        self._change_drains(app, change)
        log.info("drain added", extra={"app": app, "drain": drain.id})
        return drain

    def remove_drain(self, app: str, which: str) -> Drain:
        """Remove a drain by its id (d.…) or its URL; NotFound unless the app has it."""
        if DRAIN_ID.fullmatch(which):
            wanted, shown = which, which
        else:
            target = parse_url(which)
            wanted, shown = drain_id(target.url), target.display
        removed: list[Drain] = []

        def change(current: list[Drain]) -> list[Drain]:
            removed[:] = [d for d in current if d.id == wanted]
            if not removed:
                raise NotFound(f"{app} has no drain {shown}")
            return [d for d in current if d.id != wanted]

        self._change_drains(app, change)
        log.info("drain removed", extra={"app": app, "drain": wanted})
        return removed[0]

    def all_drains(self, watch: Watcher | None = None) -> dict[str, list[Drain]]:
        """Every app's drains (apps without any left out), for `berth logd`. With `watch`, it is
        called (on kazoo's thread: it must only signal) when the list of apps or any app's
        drains next change."""
        with self._mapped("list drains"):
            names = sorted(
                self._zk.get_children_async("/apps", watch=watch).get(timeout=self._timeout)
            )
            pending = [(n, self._zk.get_async(f"/apps/{n}/drains", watch=watch)) for n in names]
            found: dict[str, list[Drain]] = {}
            for name, result in pending:
                try:
                    data, _ = result.get(timeout=self._timeout)
                except NoNodeError:
                    # no drains yet: watch for the znode's creation (a read sets no watch on
                    # a missing znode), and read it if it appeared meanwhile
                    path = f"/apps/{name}/drains"
                    if self._zk.exists_async(path, watch=watch).get(timeout=self._timeout) is None:
                        continue
                    try:
                        data, _ = self._zk.get_async(path).get(timeout=self._timeout)
                    except NoNodeError:
                        continue
                drains = [Drain.from_json(d) for d in _load(data).get("drains", [])]
                if drains:
                    found[name] = drains
        return found

    # -- TLS certificates and ACME -------------------------------------------------------------

    def _cert_from(self, name: str, data: dict[str, Any], with_key: bool) -> Certificate:
        key = ""
        if with_key:
            key = self._need_sealer().open(data["key"], f"cert:{data['app']}/{name}").decode()
        return Certificate(
            name=name,
            app=str(data["app"]),
            hostnames=tuple(data["hostnames"]),
            issuer=str(data["issuer"]),
            not_after=str(data["not_after"]),
            fingerprint=str(data["fingerprint"]),
            source=str(data["source"]),
            created_at=str(data["created_at"]),
            cert_pem=str(data["cert"]),
            key_pem=key,
        )

    def put_cert(self, cert: Certificate) -> Certificate:
        """Store the certificate at /certs/<name> with its key sealed (bound to the app and
        name). Replaces the app's certificate of that name (a renewal, a new upload); Conflict
        if another app's has that name; NotFound if the app is gone."""
        path = f"/certs/{cert.name}"
        where = f"cert:{cert.app}/{cert.name}"
        record = {
            "app": cert.app,
            "hostnames": list(cert.hostnames),
            "issuer": cert.issuer,
            "not_after": cert.not_after,
            "fingerprint": cert.fingerprint,
            "source": cert.source,
            "created_at": cert.created_at,
            "cert": cert.cert_pem,
            "key": self._need_sealer().seal(cert.key_pem.encode(), where),
        }
        for _ in range(_CAS_ATTEMPTS):
            self.get_app(cert.app)
            with self._mapped(f"store the certificate {cert.name}"):
                try:
                    data, stat = self._get(path)
                except NoNodeError:
                    try:
                        self._zk.create_async(path, _dump(record), makepath=True).get(
                            timeout=self._timeout
                        )
                    except NodeExistsError:
                        continue
                    log.info("certificate stored", extra={"app": cert.app, "cert": cert.name})
                    return cert
                if data.get("app") != cert.app:
                    raise Conflict(f"certificate {cert.name} belongs to app {data.get('app')}")
                try:
                    self._zk.set_async(path, _dump(record), version=stat.version).get(
                        timeout=self._timeout
                    )
                except (BadVersionError, NoNodeError):
                    continue
            log.info("certificate replaced", extra={"app": cert.app, "cert": cert.name})
            return cert
        raise Conflict(f"certificate {cert.name} is changing too fast; try again")

    def all_certs(self, watch: Watcher | None = None, with_keys: bool = False) -> list[Certificate]:
        """Every stored certificate, sorted by name; keys opened only `with_keys` (the router).
        With `watch`, it is called once (on kazoo's thread: it must only signal) when a
        certificate is next added, replaced or removed."""
        with self._mapped("list certificates"):
            try:
                names = self._zk.get_children_async("/certs", watch=watch).get(
                    timeout=self._timeout
                )
            except NoNodeError:
                if watch is not None:  # armed on the node's creation
                    self._zk.exists_async("/certs", watch=watch).get(timeout=self._timeout)
                names = []
            pending = [(n, self._zk.get_async(f"/certs/{n}", watch=watch)) for n in sorted(names)]
            found = []
            for name, result in pending:
                try:
                    data, _ = result.get(timeout=self._timeout)
                except NoNodeError:
                    continue
                found.append((name, _load(data)))
        certs = []
        for name, data in found:
            try:
                certs.append(self._cert_from(name, data, with_keys))
            except (BerthError, KeyError, ValueError) as exc:  # one bad record spoils no other
                reason = exc.message if isinstance(exc, BerthError) else repr(exc)
                log.warning("certificate %s unreadable: %s", name, reason, extra={"cert": name})
        return certs

    def certs(self, app: str) -> list[Certificate]:
        """The app's certificates (without keys), sorted by name."""
        self.get_app(app)
        return [c for c in self.all_certs() if c.app == app]

    def remove_cert(self, app: str, hostname: str) -> list[str]:
        """Remove the app's certificate named `hostname`, else every one of its certificates
        that lists it. NotFound if none does. Returns the names removed."""
        hostname = validate_domain(hostname)
        mine = self.certs(app)
        chosen = [c for c in mine if c.name == hostname] or [
            c for c in mine if hostname in c.hostnames
        ]
        if not chosen:
            raise NotFound(f"app {app} has no certificate for {hostname}")
        for cert in chosen:
            with self._mapped(f"remove the certificate {cert.name}"), suppress(NoNodeError):
                self._zk.delete_async(f"/certs/{cert.name}").get(timeout=self._timeout)
            log.info("certificate removed", extra={"app": app, "cert": cert.name})
        return [c.name for c in chosen]

    def _remove_app_certs(self, app: str) -> None:
        """After an app is destroyed: its certificates go too (best effort; the router serves
        none of them anyway, since their names no longer route to the app)."""
        try:
            for cert in self.all_certs():
                if cert.app == app:
                    with self._mapped(f"remove the certificate {cert.name}"), suppress(NoNodeError):
                        self._zk.delete_async(f"/certs/{cert.name}").get(timeout=self._timeout)
        except BerthError as exc:
            log.warning("certificates of %s not removed: %s", app, exc.message)

    def put_acme_challenge(self, token: str, key_authorization: str, domain: str) -> None:
        """An HTTP-01 answer every router serves at /.well-known/acme-challenge/<token>."""
        record = {"key_authorization": key_authorization, "domain": domain, "created_at": now()}
        with self._mapped("store an ACME challenge"):
            try:
                self._zk.create_async(
                    f"/acme/challenges/{token}", _dump(record), makepath=True
                ).get(timeout=self._timeout)
            except NodeExistsError:
                self._zk.set_async(f"/acme/challenges/{token}", _dump(record)).get(
                    timeout=self._timeout
                )

    def delete_acme_challenge(self, token: str) -> None:
        with self._mapped("remove an ACME challenge"), suppress(NoNodeError):
            self._zk.delete_async(f"/acme/challenges/{token}").get(timeout=self._timeout)

    def acme_challenges(self, watch: Watcher | None = None) -> dict[str, str]:
        """Token → key authorization of every pending HTTP-01 challenge. With `watch`, it is
        called once (kazoo's thread) when one is next added or removed."""
        with self._mapped("list ACME challenges"):
            try:
                tokens = self._zk.get_children_async("/acme/challenges", watch=watch).get(
                    timeout=self._timeout
                )
            except NoNodeError:
                if watch is not None:
                    self._zk.exists_async("/acme/challenges", watch=watch).get(
                        timeout=self._timeout
                    )
                return {}
            pending = [(t, self._zk.get_async(f"/acme/challenges/{t}")) for t in sorted(tokens)]
            found = {}
            for token, result in pending:
                try:
                    data, _ = result.get(timeout=self._timeout)
                except NoNodeError:
                    continue
                found[token] = str(_load(data)["key_authorization"])
        return found

    def acme_account(self, directory: str) -> tuple[str, str] | None:
        """(account key PEM, account URL) registered at `directory`, or None."""
        with self._mapped("read the ACME account"):
            try:
                data, _ = self._get("/acme/account")
            except NoNodeError:
                return None
        if data.get("directory") != directory:
            return None
        key = self._need_sealer().open(data["key"], "acme-account").decode()
        return key, str(data["uri"])

    def put_acme_account(self, directory: str, key_pem: str, uri: str) -> None:
        record = {
            "directory": directory,
            "uri": uri,
            "key": self._need_sealer().seal(key_pem.encode(), "acme-account"),
        }
        with self._mapped("store the ACME account"):
            try:
                self._zk.create_async("/acme/account", _dump(record), makepath=True).get(
                    timeout=self._timeout
                )
            except NodeExistsError:
                self._zk.set_async("/acme/account", _dump(record)).get(timeout=self._timeout)

    @contextmanager
    def lock(self, name: str, identifier: str, timeout: float) -> Iterator[bool]:
        """Holds the ZooKeeper lock /locks/<name> (an ephemeral znode: a dead holder's lock
        goes with its session) while the block runs; yields False if it was not had within
        `timeout` seconds."""
        lock = self._zk.Lock(f"/locks/{name}", identifier)
        with self._mapped(f"take the lock {name}"):
            try:
                got = bool(lock.acquire(timeout=timeout))
            except LockTimeout:
                got = False
        try:
            yield got
        finally:
            if got:
                with suppress(Exception):
                    lock.release()

    # -- tokens ------------------------------------------------------------------------------

    def bootstrap_token(self, record: Token) -> bool:
        """Store the first admin token, once per Berth (per chroot). False if already done."""
        with self._mapped("bootstrap the admin token"):
            results = self._commit(
                [
                    ("create", "/bootstrap", _dump({"token": record.id, "at": record.created_at})),
                    ("create", f"/tokens/{record.id}", _dump(_token_json(record))),
                ]
            )
        failure = self._failure(results)
        if isinstance(failure, NodeExistsError):
            return False
        if failure is not None:
            raise BerthError(f"could not bootstrap the admin token: {type(failure).__name__}")
        return True

    def get_token(self, token_id: str) -> Token | None:
        """The stored record for a token id, or None (unknown or revoked)."""
        with self._lock:
            if self._tokens_fresh and token_id in self._tokens:
                return self._tokens[token_id]
            generation = self._tokens_generation
        with self._mapped("check the token"):
            ids = set(
                self._zk.get_children_async("/tokens", watch=self._tokens_watch).get(
                    timeout=self._timeout
                )
            )
            if token_id not in ids:
                return None
            try:
                data, _ = self._get(f"/tokens/{token_id}")
            except NoNodeError:
                return None
        record = Token(**data)
        with self._lock:
            if not self._tokens_fresh and generation == self._tokens_generation:
                self._tokens = {k: v for k, v in self._tokens.items() if k in ids}
                self._tokens_fresh = True
            if self._tokens_fresh and generation == self._tokens_generation:
                self._tokens[token_id] = record
        return record

    def _tokens_watch(self, event: Any) -> None:
        # kazoo's thread: /tokens changed; cached records are no longer to be trusted.
        self._tokens_changed()

    def _tokens_changed(self) -> None:
        with self._lock:
            self._tokens_fresh = False
            self._tokens_generation += 1

    def list_tokens(self) -> list[Token]:
        with self._mapped("list tokens"):
            ids = sorted(self._zk.get_children_async("/tokens").get(timeout=self._timeout))
            pending = [self._zk.get_async(f"/tokens/{i}") for i in ids]
            tokens = []
            for result in pending:
                try:
                    data, _ = result.get(timeout=self._timeout)
                except NoNodeError:
                    continue
                tokens.append(Token(**_load(data)))
        return sorted(tokens, key=lambda t: t.created_at)

    def add_token(self, record: Token) -> None:
        self._change_tokens(
            lambda ids: [("create", f"/tokens/{record.id}", _dump(_token_json(record)))]
        )

    def revoke_token(self, token_id: str) -> None:
        """Delete a token; refuses to delete the last one, which would lock everyone out."""

        def ops(ids: list[str]) -> list[Op]:
            if token_id not in ids:
                raise NotFound(f"no token with id {token_id}")
            if len(ids) == 1:
                raise Conflict("refusing to revoke the last token: create another one first")
            return [("delete", f"/tokens/{token_id}")]

        self._change_tokens(ops)
        self._tokens_changed()  # here at once; other API processes learn it from the watch

    def _change_tokens(self, make: Callable[[list[str]], list[Op]]) -> None:
        """Token changes are serialised by a CAS on /tokens's data version."""
        for _ in range(_CAS_ATTEMPTS):
            with self._mapped("change tokens"):
                ids, stat = self._zk.get_children_async("/tokens", include_data=True).get(
                    timeout=self._timeout
                )
                ops: list[Op] = [("set_data", "/tokens", b"", stat.version), *make(ids)]
                failure = self._failure(self._commit(ops))
            if failure is None:
                return
            if not isinstance(failure, BadVersionError):
                raise BerthError(f"could not change tokens: {type(failure).__name__}")
        raise Conflict("tokens are changing too fast; try again")


def _token_json(record: Token) -> dict[str, str]:
    return {**record.to_json(), "digest": record.digest}


def connect(hosts: str, chroot: str, sealer: Sealer | None, retry_every: float = 2.0) -> Store:
    """A started Store, waiting as long as it takes for ZooKeeper (and saying so)."""
    while True:
        store = Store(hosts, chroot, sealer)
        try:
            store.start(wait=10.0)
        except Unavailable as exc:
            log.warning("waiting for ZooKeeper: %s", exc.message, extra={"zk": hosts + chroot})
            time.sleep(retry_every)
            continue
        return store
