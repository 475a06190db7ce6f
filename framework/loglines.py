"""Log lines: the record every part of Berth's log pipeline passes around, and the pure rules
about it.

A record is one line of an app's log: an RFC 3339 UTC timestamp with microseconds
(`2026-01-02T03:04:05.678901Z`), the app, the source (`app` for a process's output, `router`,
`build`, `berth` for platform events), the process (`web.1`, `run.3`, a build's id for
`build` lines, or empty), the stream
(stdout or stderr) and the text (never a newline, at most MAX_TEXT_BYTES of UTF-8). It is
stored and streamed as one JSON object per line (NDJSON) and shown to people in Heroku's
format: `2026-01-02T03:04:05.678901Z app[web.1]: text`.

Also here: splitting a long line into records (never dropping any of it), `--since` and
size parsing, the read query's validation, and the tokens that authorise talking to
`berth logd` (HMACs of a claim under the data dir's `logs.key`; hashlib is imported inside the
token functions only, so the executor, which never mints tokens, does not load OpenSSL).

Pure: no I/O, no threads. Imports only berth.framework.errors.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

from berth.framework.errors import Invalid

MAX_TEXT_BYTES = 16 * 1024
SOURCES = ("app", "router", "build", "berth")
STREAMS = ("stdout", "stderr")
MAX_LINES = 10_000
DEFAULT_LINES = 100
MAX_GREP_CHARS = 256

APP = re.compile(r"^[a-z][a-z0-9-]{1,29}$")  # model.APP_NAME
PROCESS = re.compile(r"^[a-z][a-z0-9_-]{0,29}\.[0-9]{1,6}$")  # web.1, run.3
PROCESS_FILTER = re.compile(r"^[a-z][a-z0-9_-]{0,29}(\.[0-9]{1,6})?$")  # web or web.1
# any source's: web.1, router, api, or a build's id (12 hex digits, which may start with one)
PROCESS_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")
TIMESTAMP = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$")
_DURATION = re.compile(r"^([0-9]{1,9})([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^([0-9]{1,15})([kKmMgG]?)[bB]?$")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


_json_string: Callable[[str], str] = json.encoder.encode_basestring  # JSON string, not ASCII-only
_second: tuple[int, str] = (-1, "")  # the last whole second formatted, reused within it


def timestamp(seconds: float | None = None) -> str:
    """`seconds` since the epoch (default: now) as RFC 3339 UTC with microseconds (truncated).
    Called for every log line: the date and time part is formatted once a second."""
    global _second
    when = time.time() if seconds is None else seconds
    micros = int(when * 1_000_000)
    whole, fraction = divmod(micros, 1_000_000)
    cached = _second  # one read: another thread may replace it meanwhile
    if cached[0] != whole:
        cached = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{cached[1]}.{fraction:06d}Z"


def parse_timestamp(text: str) -> float:
    """An RFC 3339 UTC timestamp (with or without fraction, `Z` or an offset) → seconds."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise Invalid(f"{text[:40]!r} is not an RFC 3339 time like 2026-01-02T03:04:05Z") from None
    if when.tzinfo is None:
        raise Invalid(f"{text[:40]!r} has no time zone: add Z for UTC")
    return when.timestamp()


@dataclass(frozen=True, slots=True)
class Record:
    ts: str
    app: str
    source: str
    process: str
    stream: str
    text: str

    def to_json(self) -> dict[str, str]:
        return {
            "ts": self.ts,
            "app": self.app,
            "source": self.source,
            "process": self.process,
            "stream": self.stream,
            "text": self.text,
        }

    def encode(self) -> bytes:
        """One NDJSON line, newline included: what `json.dumps(self.to_json(),
        ensure_ascii=False, separators=(",", ":"))` gives, at a fifth of its cost (every line
        logd keeps is encoded once)."""
        q = _json_string
        return (
            f'{{"ts":{q(self.ts)},"app":{q(self.app)},"source":{q(self.source)},'
            f'"process":{q(self.process)},"stream":{q(self.stream)},"text":{q(self.text)}}}\n'
        ).encode()

    @classmethod
    def from_json(cls, data: object) -> Record:
        """A checked record; Invalid says what is wrong."""
        if not isinstance(data, Mapping):
            raise Invalid("a log record must be a JSON object")
        fields = {}
        for name in ("ts", "app", "source", "process", "stream", "text"):
            value = data.get(name, "")
            if not isinstance(value, str):
                raise Invalid(f"log record field {name} must be a string")
            fields[name] = value
        record = cls(**fields)
        validate(record)
        return record

    @classmethod
    def decode(cls, line: bytes) -> Record:
        try:
            data = json.loads(line)
        except ValueError:
            raise Invalid("a log record is not valid JSON") from None
        return cls.from_json(data)

    def heroku(self) -> str:
        """`2026-01-02T03:04:05.678901Z app[web.1]: text` (`berth: text` without a process)."""
        who = f"{self.source}[{self.process}]" if self.process else self.source
        return f"{self.ts} {who}: {self.text}"

    @property
    def process_type(self) -> str:
        return self.process.partition(".")[0]


def validate(record: Record) -> None:
    if not APP.fullmatch(record.app):
        raise Invalid(f"app {record.app[:40]!r} is not an app name")
    if record.source not in SOURCES:
        raise Invalid(f"source {record.source[:20]!r} is not one of {', '.join(SOURCES)}")
    if record.process and not PROCESS_NAME.fullmatch(record.process):
        raise Invalid(f"process {record.process[:40]!r} is not like web.1")
    validate_line(record.ts, record.stream, record.text)


def validate_line(ts: str, stream: str, text: str) -> None:
    """What `validate` checks of a record beyond its app, source and process (which a task's
    lines take from its token, checked once per batch)."""
    if not TIMESTAMP.fullmatch(ts):
        raise Invalid(f"timestamp {ts[:40]!r} is not RFC 3339 UTC with microseconds")
    if stream not in STREAMS:
        raise Invalid(f"stream {stream[:20]!r} is not stdout or stderr")
    if "\n" in text:
        raise Invalid("a log record's text has no newline")
    if len(text) > MAX_TEXT_BYTES:
        raise Invalid(f"a log record's text is longer than {MAX_TEXT_BYTES} bytes")
    try:
        size = len(text.encode())
    except UnicodeEncodeError:
        raise Invalid("a log record's text is not valid Unicode (a lone surrogate)") from None
    if size > MAX_TEXT_BYTES:
        raise Invalid(f"a log record's text is longer than {MAX_TEXT_BYTES} bytes")


def _cut(data: bytes, limit: int) -> int:
    """Where to cut valid UTF-8 `data` (longer than `limit`) so no character is split."""
    cut = limit
    while cut > limit - 3 and data[cut] & 0xC0 == 0x80:  # a continuation byte: step back
        cut -= 1
    return cut if data[cut] & 0xC0 != 0x80 else limit


def split_line(line: bytes, limit: int = MAX_TEXT_BYTES) -> Iterator[str]:
    """One line of output (its newline, and a CR before it, removed) as texts of at most
    `limit` UTF-8 bytes each, cut between characters; bytes that are not UTF-8 become U+FFFD.
    An empty line is one empty text. Nothing is dropped."""
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    if len(line) * 3 <= limit:  # fits even if every byte became U+FFFD (3 bytes): one text
        yield line.decode("utf-8", "replace").replace("\n", " ")
        return
    data = line.decode("utf-8", "replace").replace("\n", " ").encode()
    if len(data) <= limit:
        yield data.decode()
        return
    while data:
        cut = _cut(data, limit) if len(data) > limit else len(data)
        yield data[:cut].decode()
        data = data[cut:]


def parse_since(value: str, now: float) -> float:
    """`10m`, `30s`, `2h`, `1d` ago, or an RFC 3339 time → seconds since the epoch."""
    text = value.strip()
    match = _DURATION.fullmatch(text)
    if match:
        return now - int(match.group(1)) * _UNITS[match.group(2)]
    if "T" in text:
        return parse_timestamp(text)
    raise Invalid(
        f"since {value[:40]!r}: expected a duration like 30s, 10m, 2h, 1d or an RFC 3339 time"
    )


def parse_size(value: str) -> int:
    """`100m`, `512k`, `1g`, `1048576` → bytes (powers of 1024)."""
    match = _SIZE.fullmatch(value.strip())
    if not match:
        raise Invalid(f"size {value[:40]!r}: expected bytes, or a number with k, m or g")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


@dataclass(frozen=True, slots=True)
class Query:
    """What a reader asks for: the last `lines` records (matching the filters), then, with
    `tail`, every new one."""

    lines: int = DEFAULT_LINES
    tail: bool = False
    ps: str = ""  # "web" (a type) or "web.1"
    source: str = ""
    since: float | None = None
    grep: str = ""
    text: bool = False  # Heroku's format instead of NDJSON

    def matches(self, record: Record) -> bool:
        if self.source and record.source != self.source:
            return False
        if self.ps and self.ps not in (record.process, record.process_type):
            return False
        if self.grep and self.grep not in record.text:
            return False
        return not (self.since is not None and parse_timestamp(record.ts) < self.since)

    def params(self) -> dict[str, str]:
        """The query as parameters `parse_query` reads back (since as an absolute time)."""
        params = {"lines": str(self.lines)}
        if self.tail:
            params["tail"] = "1"
        if self.ps:
            params["ps"] = self.ps
        if self.source:
            params["source"] = self.source
        if self.since is not None:
            params["since"] = timestamp(self.since)
        if self.grep:
            params["grep"] = self.grep
        if self.text:
            params["format"] = "text"
        return params

    def render(self, record: Record) -> bytes:
        if self.text:
            return (record.heroku() + "\n").encode()
        return record.encode()


def _flag(name: str, value: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("", "0", "false", "no"):
        return False
    raise Invalid(f"{name} {value[:20]!r}: expected 1 or 0")


def parse_query(args: Mapping[str, str], now: float) -> Query:
    """A read request's parameters → Query; Invalid names the bad one."""
    known = {"lines", "tail", "ps", "source", "since", "grep", "format"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise Invalid(f"unknown parameter {unknown[0][:40]!r}; known: {', '.join(sorted(known))}")
    lines_text = args.get("lines", str(DEFAULT_LINES)).strip()
    if not lines_text.isdigit() or not 0 <= int(lines_text) <= MAX_LINES:
        raise Invalid(f"lines {lines_text[:20]!r}: expected a number from 0 to {MAX_LINES}")
    ps = args.get("ps", "")
    if ps and not PROCESS_FILTER.fullmatch(ps):
        raise Invalid(f"ps {ps[:40]!r}: expected a process type like web or a process like web.1")
    source = args.get("source", "")
    if source and source not in SOURCES:
        raise Invalid(f"source {source[:20]!r}: expected one of {', '.join(SOURCES)}")
    since_text = args.get("since", "")
    grep = args.get("grep", "")
    if len(grep) > MAX_GREP_CHARS or "\n" in grep:
        raise Invalid(f"grep: at most {MAX_GREP_CHARS} characters on one line")
    fmt = args.get("format", "json")
    if fmt not in ("json", "text"):
        raise Invalid(f"format {fmt[:20]!r}: expected json or text")
    return Query(
        lines=int(lines_text),
        tail=_flag("tail", args.get("tail", "")),
        ps=ps,
        source=source,
        since=parse_since(since_text, now) if since_text else None,
        grep=grep,
        text=fmt == "text",
    )


def crash_text(state: str, exit_code: object, oom: bool) -> str:
    """A platform line for a process that ended on its own (scheduler.py)."""
    if oom:
        return "crashed: out of memory"
    if state == "finished":
        return "exited with code 0"
    return f"crashed with exit code {exit_code if exit_code is not None else '?'}"


@dataclass(frozen=True, slots=True)
class AppState:
    """What platform lines are written about: an app's release (with its description) and
    formation, as the scheduler sees them."""

    release: int
    description: str
    formation: Mapping[str, int]


def state_changes(
    before: Mapping[str, AppState] | None, after: Mapping[str, AppState]
) -> list[tuple[str, str]]:
    """(app, text) platform lines for what changed: `Release v5: <description>` and
    `Scaled to web=2, worker=1`. Nothing on the first look (`before` None), so a new leader
    does not repeat what its predecessor said."""
    if before is None:
        return []
    lines = []
    for app, now in sorted(after.items()):
        then = before.get(app)
        if then is None or then.release != now.release:
            lines.append((app, f"Release v{now.release}: {now.description}"))
        if dict(now.formation) != dict(then.formation if then is not None else {}):
            scaled = ", ".join(f"{k}={v}" for k, v in sorted(now.formation.items()))
            lines.append((app, f"Scaled to {scaled or 'nothing'}"))
    return lines


# -- tokens --------------------------------------------------------------------------------------
#
# `task/<app>/<process>/<release>/<mac>`: an executor may write its own process's lines, and
# only those; `platform/<mac>`: the framework writes platform (`berth`) lines for any app;
# `read/<mac>`: the API reads. <mac> = hex HMAC-SHA256(logs.key, "berth-logs:" + the claim).


def _mac(key: bytes, claim: str) -> str:
    import hashlib  # here: the executor imports this module and must not load OpenSSL
    import hmac

    return hmac.new(key, b"berth-logs:" + claim.encode(), hashlib.sha256).hexdigest()


def task_token(key: bytes, app: str, process: str, release: int) -> str:
    claim = f"task/{app}/{process}/{release}"
    return f"{claim}/{_mac(key, claim)}"


def platform_token(key: bytes) -> str:
    return f"platform/{_mac(key, 'platform')}"


def read_token(key: bytes) -> str:
    return f"read/{_mac(key, 'read')}"


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows: `kind` task (writes as app/process), platform or read."""

    kind: str
    app: str = ""
    process: str = ""
    release: int = 0


def verify_token(key: bytes, token: str) -> Grant | None:
    """The grant a token carries, or None if it is not one of this key's."""
    import hmac

    claim, _, mac = token.rpartition("/")
    if not claim or len(mac) != 64:
        return None
    if not hmac.compare_digest(_mac(key, claim), mac):
        return None
    parts = claim.split("/")
    if parts == ["platform"]:
        return Grant("platform")
    if parts == ["read"]:
        return Grant("read")
    if (
        len(parts) == 4
        and parts[0] == "task"
        and parts[3].isdigit()
        and APP.fullmatch(parts[1])
        and PROCESS.fullmatch(parts[2])
    ):
        return Grant("task", parts[1], parts[2], int(parts[3]))
    return None
