"""`git push` and `git clone` over git's smart HTTP protocol, at `API/git/APP.git`.

    GET  /git/APP.git/info/refs?service=git-receive-pack   the refs, for a push
    POST /git/APP.git/git-receive-pack                      the push: commands + pack → build
    GET  /git/APP.git/info/refs?service=git-upload-pack    the refs, for a clone or fetch
    POST /git/APP.git/git-upload-pack                       the pack a clone or fetch wants

Each app has a bare repository `DATA_DIR/repos/<app>.git`, created by its first push (app
names are validated by the route and the Store, so a name cannot leave `repos/`), removed when
the app is destroyed (and replaced if it predates an app created again under the same name).

Auth is the API's own (api/auth.py: HTTP Basic with the token as the password); a 401 here
carries `WWW-Authenticate: Basic realm="berth"` so git asks its credential helper (`berth
git:credentials`) and retries. Other errors are text/plain, which git prints as `remote:`
lines (an unknown app: "no app named x …" and "repository not found").

Receiving is done here with dulwich's pieces (pkt-lines, `add_thin_pack`), not with dulwich's
ReceivePackHandler, because a hook's output would reach the pusher only once the hook
returned. The request thread checks the commands (only `main`/`master` deploy; one branch
per push; no deletes), stores the pack only if a branch will deploy (else reads and drops it;
either way within the size limit), then answers with a streamed
response: the build's output as side-band-64k progress packets (band 2, which git prints as
`remote: …` as they arrive), empty band-1 packets as keep-alives while a step is quiet, and
finally report-status in band 1 — `ok refs/heads/main`, or `ng refs/heads/main <why>`, which
makes `git push` exit non-zero. gunicorn's gthread worker writes each yielded chunk to the
socket at once (chunked transfer encoding), so nothing is held back.

Runs in gunicorn's request threads; the build itself runs in a thread of api/builds.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

from dulwich.errors import HangupException
from dulwich.protocol import (
    SIDE_BAND_CHANNEL_DATA,
    SIDE_BAND_CHANNEL_PROGRESS,
    Protocol,
    ReceivableProtocol,
    pkt_line,
)
from dulwich.repo import Repo
from dulwich.server import DictBackend, UploadPackHandler
from flask import Blueprint, Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

if TYPE_CHECKING:
    from dulwich.server import BackendRepo

from berth.api import applog, prune
from berth.api.builds import ZERO, BuildSettings, Outcome, Pipeline, Push
from berth.api.context import settings, store, who
from berth.buildpacks.slug import remove_cache
from berth.framework.errors import BadRequest, BerthError, NotFound
from berth.framework.model import validate_app_name

log = logging.getLogger(__name__)

bp = Blueprint("git", __name__, url_prefix="/git")

PIPELINE = "berth.builds"
DEPLOY_BRANCHES = ("refs/heads/main", "refs/heads/master")
CAPABILITIES = b"report-status side-band-64k quiet ofs-delta agent=berth"
MAX_BAND_PAYLOAD = 65515  # a side-band-64k packet holds 65520 bytes: 4 length + 1 band
MAX_COMMANDS = 100
_pipeline_lock = threading.Lock()
_repos_lock = threading.Lock()


# -- pure protocol helpers (tests/unit/test_git_protocol.py) ---------------------------------


class ProtocolError(BerthError):
    status = 400
    code = "bad_request"


@dataclass(frozen=True, slots=True)
class Command:
    old: str
    new: str
    ref: str


def parse_commands(lines: list[bytes]) -> tuple[list[Command], set[bytes]]:
    """receive-pack's command pkt-lines (`old new ref`, the first with `\\0capabilities`)."""
    commands: list[Command] = []
    capabilities: set[bytes] = set()
    if len(lines) > MAX_COMMANDS:
        raise ProtocolError(f"push updates {len(lines)} refs; at most {MAX_COMMANDS} at once")
    for n, line in enumerate(lines):
        line = line.rstrip(b"\n")
        if n == 0 and b"\0" in line:
            line, _, caps = line.partition(b"\0")
            capabilities = set(caps.split())
        parts = line.split(b" ")
        if (
            len(parts) != 3
            or not all(_is_sha(p) for p in parts[:2])
            or not parts[2].startswith(b"refs/")
        ):
            raise ProtocolError("malformed receive-pack command")
        try:
            ref = parts[2].decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("ref names must be ASCII") from None
        commands.append(Command(parts[0].decode(), parts[1].decode(), ref))
    return commands, capabilities


def _is_sha(value: bytes) -> bool:
    return len(value) == 40 and all(c in b"0123456789abcdef" for c in value)


def ref_problem(command: Command) -> str | None:
    """Why this ref update is refused, or None for a deployable branch."""
    short = command.ref.removeprefix("refs/heads/")
    if command.ref not in DEPLOY_BRANCHES:
        if command.ref.startswith("refs/heads/"):
            return f"only main or master deploy, not {short[:60]}: git push berth HEAD:main"
        return f"only branches main or master can be pushed, not {command.ref[:60]}"
    if command.new == ZERO:
        return f"deleting {short} is not allowed: it is what the app runs"
    return None


def check_commands(commands: list[Command]) -> dict[str, str | None]:
    """ref → None (deploy it) or why it is refused. At most one branch deploys per push."""
    results = {c.ref: ref_problem(c) for c in commands}
    deploying = [ref for ref, problem in results.items() if problem is None]
    if len(deploying) > 1:
        for ref in deploying:
            results[ref] = "push main or master, not both at once"
    return results


def band(channel: int, data: bytes) -> Iterator[bytes]:
    """`data` as side-band-64k packets on `channel`, split to fit."""
    for start in range(0, len(data), MAX_BAND_PAYLOAD):
        yield pkt_line(bytes([channel]) + data[start : start + MAX_BAND_PAYLOAD])


def report_status(unpack: str, results: dict[str, str | None]) -> bytes:
    """The report-status pkt-lines, flush included."""
    lines = [pkt_line(f"unpack {unpack}\n".encode())]
    for ref, problem in results.items():
        text = f"ok {ref}\n" if problem is None else f"ng {ref} {_one_line(problem)}\n"
        lines.append(pkt_line(text.encode()))
    return b"".join(lines) + pkt_line(None)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:400]


def advertisement(service: str, refs: dict[bytes, bytes], capabilities: bytes) -> bytes:
    """info/refs for the smart protocol: the service line, then each ref (capabilities on the
    first; `capabilities^{}` when there is none)."""
    out = [pkt_line(f"# service={service}\n".encode()), pkt_line(None)]
    items = sorted(refs.items()) or [(b"capabilities^{}", ZERO.encode())]
    for n, (name, sha) in enumerate(items):
        line = sha + b" " + name + ((b"\0" + capabilities) if n == 0 else b"") + b"\n"
        out.append(pkt_line(line))
    out.append(pkt_line(None))
    return b"".join(out)


# -- repositories -----------------------------------------------------------------------------


def repo_path(data_dir: Path, app: str) -> Path:
    return data_dir / "repos" / f"{validate_app_name(app)}.git"


def open_repo(data_dir: Path, app: str, app_created_at: str, create: bool) -> Repo | None:
    """The app's bare repository (None if it has none and `create` is False). A repository
    left by an earlier app of the same name is replaced."""
    path = repo_path(data_dir, app)
    with _repos_lock:  # two first pushes at once must not both create it
        return _open_repo(path, app_created_at, create)


def _open_repo(path: Path, app_created_at: str, create: bool) -> Repo | None:
    if path.exists():
        repo = Repo(str(path))
        try:
            owner = repo.get_config().get((b"berth",), b"appcreated").decode()
        except KeyError:
            owner = ""
        if owner == app_created_at:
            return repo
        repo.close()
        shutil.rmtree(path)
    if not create:
        return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    repo = Repo.init_bare(str(path), mkdir=True)
    config = repo.get_config()
    config.set((b"berth",), b"appcreated", app_created_at.encode())
    config.write_to_path()
    return repo


# -- the request body -------------------------------------------------------------------------


class PackTooLarge(Exception):
    pass


class _Input:
    """The request body, gunzipped if git compressed it, counted against `limit`."""

    def __init__(self, stream: IO[bytes], limit: int, gzipped: bool) -> None:
        self._stream = stream
        self._limit = limit
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None
        self._buffer = b""
        self.count = 0

    def _raw(self, size: int) -> bytes:
        data = self._stream.read(size)
        self.count += len(data)
        if self.count > self._limit:
            raise PackTooLarge
        return data

    def read(self, size: int) -> bytes:
        """Exactly `size` bytes unless the body ends first."""
        while len(self._buffer) < size:
            data = self._raw(max(size - len(self._buffer), 65536))
            if not data:
                break
            self._buffer += self._inflate.decompress(data) if self._inflate else data
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    def drain(self) -> None:
        """Read the rest of the body and drop it, so the client gets to read the answer."""
        while self._stream.read(65536):
            pass


def _input(limit: int) -> _Input:
    # The app's 1 MiB body limit is for JSON; a pack is counted against its own limit.
    request.max_content_length = 1 << 62
    encoding = request.headers.get("Content-Encoding", "").lower()
    if encoding not in ("", "gzip", "x-gzip"):
        raise BadRequest(f"unsupported Content-Encoding {encoding[:20]}")
    return _Input(request.stream, limit, gzipped=bool(encoding))


# -- routes -----------------------------------------------------------------------------------


def pipeline() -> Pipeline:
    app = current_app
    with _pipeline_lock:
        found = app.extensions.get(PIPELINE)
        if found is None:
            found = Pipeline(
                store(),
                settings(),
                BuildSettings.from_env(),
                applog=applog.for_app(app, settings().logs_url, settings().data_dir),
                pruner=prune.current(),
            )
            app.extensions[PIPELINE] = found
    assert isinstance(found, Pipeline)
    return found


def _app_created_at(app: str) -> str:
    try:
        return store().get_app(validate_app_name(app)).created_at
    except NotFound:
        raise NotFound(f"no app named {app}: create it with `berth apps:create {app}`") from None


def _service() -> str:
    service = request.args.get("service", "")
    if service not in ("git-receive-pack", "git-upload-pack"):
        raise BadRequest("only git's smart HTTP protocol is served: use git 1.6.6 or newer")
    return service


@bp.get("/<app>.git/info/refs")
def info_refs(app: str) -> Response:
    service = _service()
    created = _app_created_at(app)
    repo = open_repo(settings().data_dir, app, created, create=False)
    if service == "git-receive-pack":
        refs = {} if repo is None else _branch_refs(repo)
        body = advertisement(service, refs, CAPABILITIES)
    else:
        body = _upload_pack(repo, None)
    if repo is not None:
        repo.close()
    return _git_response(service, "advertisement", body)


def _branch_refs(repo: Repo) -> dict[bytes, bytes]:
    return {k: v for k, v in repo.refs.as_dict().items() if k.startswith(b"refs/")}


def _git_response(service: str, kind: str, body: bytes | Iterator[bytes]) -> Response:
    response = Response(body, content_type=f"application/x-{service}-{kind}")
    response.headers["Cache-Control"] = "no-cache, max-age=0, must-revalidate"
    return response


def _upload_pack(repo: Repo | None, data: bytes | None) -> bytes:
    """Runs dulwich's upload-pack handler over buffers: the advertisement (data None) or the
    answer to a fetch request."""
    if repo is None:  # nothing pushed yet: an empty repository to clone
        if data is None:
            return advertisement("git-upload-pack", {}, b"agent=berth")
        return b""
    out = BytesIO()
    proto = ReceivableProtocol(BytesIO(data or b"").read, out.write)
    if data is None:
        out.write(pkt_line(b"# service=git-upload-pack\n") + pkt_line(None))
    backend = DictBackend({"/": cast("BackendRepo", repo)})
    handler = UploadPackHandler(backend, ["/"], proto, stateless_rpc=True, advertise_refs=not data)
    with contextlib.suppress(HangupException):
        handler.handle()
    return out.getvalue()


@bp.post("/<app>.git/git-upload-pack")
def upload_pack(app: str) -> Response:
    created = _app_created_at(app)
    body = _input(64 << 20)
    try:
        data = body.read(64 << 20)
    except PackTooLarge:
        raise BadRequest("fetch request too large") from None
    repo = open_repo(settings().data_dir, app, created, create=False)
    try:
        answer = _upload_pack(repo, data)
    finally:
        if repo is not None:
            repo.close()
    return _git_response("git-upload-pack", "result", answer)


@bp.post("/<app>.git/git-receive-pack")
def receive_pack(app: str) -> Response:
    created = _app_created_at(app)
    work = pipeline()
    limit = work.build_settings.max_pack_bytes
    body = _input(limit)
    proto = Protocol(body.read, lambda _: None)
    unpack = "ok"
    commands: list[Command] = []
    capabilities: set[bytes] = set()
    try:
        commands, capabilities = parse_commands(list(proto.read_pkt_seq()))
        if not commands:  # git's probe before a large POST, or nothing to update
            return _git_response("git-receive-pack", "result", b"")
        results = check_commands(commands)
        # The pack is stored only when a branch will deploy; otherwise it is read and dropped.
        if any(problem is None for problem in results.values()):
            repo = open_repo(settings().data_dir, app, created, create=True)
            assert repo is not None
            with repo:
                try:
                    repo.object_store.add_thin_pack(body.read, None)
                except PackTooLarge:
                    raise
                except Exception as exc:  # dulwich raises many kinds for a bad pack
                    log.warning("bad pack", extra={"app": app, "why": type(exc).__name__})
                    unpack = "unpacker error: the pack could not be read"
        body.drain()
    except PackTooLarge:
        body.drain()
        message = f"the push is over the {limit >> 20} MiB limit"
        refused: dict[str, str | None] = {c.ref: message for c in commands}
        side_band = b"side-band-64k" in capabilities
        return _git_response("git-receive-pack", "result", _refusal(message, refused, side_band))
    side_band = b"side-band-64k" in capabilities
    if unpack != "ok":
        results = dict.fromkeys(results, "unpacker error")
    deploy = [c for c in commands if results[c.ref] is None]
    if not deploy:
        note = next((p for p in results.values() if p), "nothing to deploy")
        return _git_response(
            "git-receive-pack", "result", _refusal(note, results, side_band, unpack)
        )
    command = deploy[0]
    push = Push(
        app, command.ref, command.old, command.new, who(), repo_path(settings().data_dir, app)
    )
    log.info("push received", extra={"app": app, "ref": command.ref, "bytes": body.count})
    return _git_response("git-receive-pack", "result", _deploying(work, push, results, side_band))


def _refusal(
    message: str, results: dict[str, str | None], side_band: bool, unpack: str = "ok"
) -> bytes:
    status = report_status(unpack, results)
    if not side_band:
        return status
    return b"".join(band(SIDE_BAND_CHANNEL_PROGRESS, f" !     {message}\n".encode())) + b"".join(
        [*band(SIDE_BAND_CHANNEL_DATA, status), pkt_line(None)]
    )


def _deploying(
    work: Pipeline, push: Push, results: dict[str, str | None], side_band: bool
) -> Iterator[bytes]:
    outcome: Outcome | None = None
    for item in work.stream(push):
        if isinstance(item, Outcome):
            outcome = item
        elif not side_band:
            continue
        elif item is None:
            yield pkt_line(bytes([SIDE_BAND_CHANNEL_DATA]))  # keep-alive: an empty band-1 packet
        else:
            yield from band(SIDE_BAND_CHANNEL_PROGRESS, item.encode() + b"\n")
    assert outcome is not None
    results = {**results, push.ref: None if outcome.ok else outcome.message}
    status = report_status("ok", results)
    if side_band:
        yield b"".join([*band(SIDE_BAND_CHANNEL_DATA, status), pkt_line(None)])
    else:
        yield status


# -- errors git can show; repositories of destroyed apps --------------------------------------


def _text(status: int, message: str) -> Response:
    return Response(message.rstrip("\n") + "\n", status=status, content_type="text/plain")


@bp.errorhandler(BerthError)
def _berth_error(exc: BerthError) -> Response:
    if exc.status == 401:
        # JSON like every other 401 of the API; git only needs the challenge to ask for the
        # token and prints "Authentication failed" itself when a token is refused.
        response = Response(
            json.dumps(exc.to_json()) + "\n", status=401, content_type="application/json"
        )
        response.headers["WWW-Authenticate"] = 'Basic realm="berth"'
        return response
    if exc.status >= 500:
        log.error("git request failed: %s", exc.message, extra={"code": exc.code})
    return _text(exc.status, exc.message)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    return _text(exc.code or 500, exc.description or exc.name)


def install(app: Flask, remove: Callable[[Path, str], None] | None = None) -> None:
    """Registers the blueprint, and removes an app's repository and build cache when the app
    is destroyed."""
    app.register_blueprint(bp)

    @app.after_request
    def _forget_repo(response: Response) -> Response:
        if (
            request.endpoint == "apps.destroy_app"
            and response.status_code == 200
            and g.get("berth_token")
        ):
            name = (request.view_args or {}).get("app", "")
            try:
                path = repo_path(settings().data_dir, str(name))
            except BerthError:
                return response
            (remove or _remove_tree)(path, str(name))
            if remove_cache(settings().data_dir, str(name)):  # its build cache (buildpacks)
                log.info("build cache removed", extra={"app": str(name)})
            prune.current().forget(str(name))  # its images, once its containers are gone
        return response


def _remove_tree(path: Path, app: str) -> None:
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
        log.info("repository removed", extra={"app": app})
