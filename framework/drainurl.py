"""Log drains: where an app's log lines are also sent, and the pure rules about them.

A drain is a URL (`syslog://host:port`, `syslog+tls://host:port`, `https://host[:port]/path`)
with an id (`d.` + 12 hex of a SHA-256 of the normalised URL, so the same URL always has the
same id) and the time it was added. Also here: the URL's validation (scheme, host, port; no
credentials in the URL; messages never repeat a URL's query, which may hold a token), the
RFC 5424 syslog message for a record and its RFC 6587 octet-counting frame, and the capped
backoff that senders wait between attempts.

Pure: no I/O, no threads. Imports only berth.framework (errors, loglines).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from berth.framework.errors import Invalid
from berth.framework.loglines import Record

MAX_DRAINS_PER_APP = 10
MAX_URL_CHARS = 1024
DEFAULT_PORTS = {"syslog": 514, "syslog+tls": 6514, "https": 443}
DRAIN_ID = re.compile(r"^d\.[0-9a-f]{12}$")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_EXAMPLES = "syslog://logs.example.com:514, syslog+tls://logs.example.com:6514 or https://…"

# RFC 5424 PRI = facility * 8 + severity: facility 1 (user-level messages); severity 6
# (informational) for stdout, 3 (error) for stderr.
FACILITY_USER = 1
SEVERITY = {"stdout": 6, "stderr": 3}

BACKOFF_FIRST = 0.5
BACKOFF_CAP = 30.0


@dataclass(frozen=True, slots=True)
class Target:
    """A checked drain URL: `url` is its normalised form (scheme and host lower-cased, the
    port always written), `display` the same without the query (for logs and messages)."""

    scheme: str
    host: str  # an IPv6 address without brackets
    port: int
    path: str  # https only: the path and query to POST to ("/" at least)

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path if self.scheme == 'https' else ''}"

    @property
    def display(self) -> str:
        if self.scheme != "https":
            return self.url
        path, query = self.path.partition("?")[::2]
        return f"https://{self.netloc}{path}{'?…' if query else ''}"


def _scheme_of(text: str) -> str:
    scheme, sep, _ = text.partition("://")
    return scheme.lower() if sep else ""


def _host(raw: str) -> str:
    """A host name (letters, digits, inner dashes; lower-cased) or an IP address."""
    if raw.startswith("["):
        if not raw.endswith("]"):
            raise Invalid("drain URL: an IPv6 address is written in brackets, like [::1]")
        try:
            return str(ipaddress.IPv6Address(raw[1:-1]))
        except ValueError:
            raise Invalid("drain URL: the address in brackets is not an IPv6 address") from None
    host = raw.lower().removesuffix(".")
    if not host:
        raise Invalid(f"drain URL: a host is missing; expected {_EXAMPLES}")
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    if not host.isascii():
        raise Invalid("drain URL: the host is not ASCII; give its punycode form (xn--…)")
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise Invalid(
            "drain URL: the host is not a valid host name (letters, digits and inner dashes"
            " between dots) or IP address"
        )
    if labels[-1].isdigit():
        raise Invalid("drain URL: the host is not a valid host name or IPv4 address")
    return host


def parse_url(text: object) -> Target:
    """A drain URL → Target; Invalid says what is wrong without repeating credentials."""
    if not isinstance(text, str) or not text.strip():
        raise Invalid(f"give the drain as a URL: {_EXAMPLES}")
    text = text.strip()
    if len(text) > MAX_URL_CHARS:
        raise Invalid(f"drain URL: longer than {MAX_URL_CHARS} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise Invalid("drain URL: spaces and control characters are not allowed")
    scheme = _scheme_of(text)
    if scheme == "http":
        raise Invalid(
            "drain URL: plain http:// is not accepted (log lines would cross the network"
            " in the clear); use https://"
        )
    if scheme not in DEFAULT_PORTS:
        raise Invalid(f"drain URL: the scheme must be syslog, syslog+tls or https; {_EXAMPLES}")
    try:
        parts = urlsplit(text)
        port_value = parts.port
    except ValueError as e:
        if "IPv6" in str(e):
            raise Invalid("drain URL: an IPv6 address is written in brackets, like [::1]") from None
        raise Invalid("drain URL: the port must be a number from 1 to 65535") from None
    netloc = parts.netloc
    if "@" in netloc:
        raise Invalid(
            "drain URL: credentials (user:password@) are not accepted in a drain URL;"
            " an https drain may carry a token in its path or query"
        )
    if parts.fragment or "#" in text:
        raise Invalid("drain URL: a fragment (#…) is not allowed")
    hostport = netloc
    if hostport.startswith("["):
        host_raw = hostport[: hostport.find("]") + 1] if "]" in hostport else hostport
    else:
        host_raw = hostport.rpartition(":")[0] if ":" in hostport else hostport
    host = _host(host_raw)
    if port_value is None and hostport.endswith(":"):
        raise Invalid("drain URL: the port must be a number from 1 to 65535")
    port = DEFAULT_PORTS[scheme] if port_value is None else port_value
    if not 1 <= port <= 65535:
        raise Invalid("drain URL: the port must be a number from 1 to 65535")
    if scheme == "https":
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return Target(scheme, host, port, path)
    if parts.path not in ("", "/") or parts.query:
        raise Invalid(f"drain URL: a {scheme}:// drain is only a host and port, no path or query")
    return Target(scheme, host, port, "")


def drain_id(url: str) -> str:
    return "d." + hashlib.sha256(url.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Drain:
    id: str
    url: str  # normalised (Target.url)
    created_at: str

    @classmethod
    def new(cls, url: object, created_at: str) -> Drain:
        target = parse_url(url)
        return cls(drain_id(target.url), target.url, created_at)

    @property
    def target(self) -> Target:
        return parse_url(self.url)

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "url": self.url, "created_at": self.created_at}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Drain:
        return cls(str(data["id"]), str(data["url"]), str(data.get("created_at", "")))


# -- RFC 5424 over TCP (RFC 6587 octet counting) --------------------------------------------------


def _printable(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII (33-126), at most `limit`, `-` if empty."""
    if value.isascii() and value.isprintable() and " " not in value:  # the usual case
        return value[:limit] or "-"
    clean = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return clean or "-"


def syslog_message(record: Record) -> bytes:
    """`<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG`: HOSTNAME is the app, APP-NAME
    the source (app, router, build, berth), PROCID the process (web.1) or `-`, MSGID `-`, no
    structured data, MSG the text as UTF-8 (RFC 5424's MSG-ANY: no BOM)."""
    pri = FACILITY_USER * 8 + SEVERITY.get(record.stream, 6)
    header = (
        f"<{pri}>1 {record.ts} {_printable(record.app, 255)} {_printable(record.source, 48)}"
        f" {_printable(record.process, 128)} - -"
    )
    return f"{header} {record.text}".encode() if record.text else header.encode()


def frame(message: bytes) -> bytes:
    """RFC 6587 octet counting: `MSG-LEN SP SYSLOG-MSG`."""
    return b"%d %s" % (len(message), message)


def backoff(attempt: int, first: float = BACKOFF_FIRST, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait after `attempt` failures in a row (1, 2, …): doubling, capped."""
    if attempt <= 0:
        return 0.0
    return float(min(cap, first * 2.0 ** min(attempt - 1, 32)))
