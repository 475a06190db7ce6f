"""The pages HAProxy answers with when it, not an app, has to answer: no app at this host,
no web process running, the app too slow, a bad request.

Responsibility: the text of each page as a complete HTTP/1.1 response, the form HAProxy's
`errorfile` wants (status line, headers, blank line, body; CRLF line ends; Content-Length
exact). Pure; any thread may call it. haproxy.py writes them into the run directory.
"""

from __future__ import annotations

import html
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Page:
    status: int
    reason: str
    title: str
    text: str


def pages(timeout_server: int) -> tuple[Page, ...]:
    """Every page, in status order. `timeout_server` is named by the 504 page."""
    return (
        Page(400, "Bad Request", "Bad request", "The router could not read this request."),
        Page(404, "Not Found", "No app here", "There is no app at this host name."),
        Page(
            408,
            "Request Timeout",
            "Request timeout",
            "The request did not arrive in time, so the router gave up waiting for it.",
        ),
        Page(
            431,
            "Request Header Fields Too Large",
            "Request headers too large",
            "The request's headers are larger than the router accepts.",
        ),
        Page(
            500,
            "Internal Server Error",
            "Router error",
            "The router failed to handle this request.",
        ),
        Page(
            502,
            "Bad Gateway",
            "Bad gateway",
            "The app's web process closed the connection or sent an invalid response.",
        ),
        Page(
            503,
            "Service Unavailable",
            "No web process",
            "No web process is running for this app, or none is answering.",
        ),
        Page(
            504,
            "Gateway Timeout",
            "Gateway timeout",
            "The app's web process did not start answering within "
            f"{timeout_server} second{'' if timeout_server == 1 else 's'}.",
        ),
    )


def response(page: Page) -> bytes:
    """The page as a whole HTTP response."""
    body = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n'
        '<head><meta charset="utf-8">'
        f"<title>{page.status} {html.escape(page.title)}</title></head>\n"
        f"<body>\n<h1>{html.escape(page.title)}</h1>\n"
        f"<p>{html.escape(page.text)}</p>\n"
        f"<hr><p><small>{page.status} {page.reason} &middot; berth router</small></p>\n"
        "</body>\n</html>\n"
    ).encode()
    head = (
        f"HTTP/1.1 {page.status} {page.reason}\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-cache, no-store\r\n"
        "\r\n"
    ).encode()
    return head + body
