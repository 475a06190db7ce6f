"""The OpenAPI 3 document for /v1, written by hand next to the routes; a test checks that it
names exactly the routes Flask serves, with the same methods."""

from __future__ import annotations

from typing import Any


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "404": {"$ref": "#/components/responses/NotFound"},
    "422": {"$ref": "#/components/responses/Invalid"},
}
_APP = {"name": "app", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {
    "name": "version",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "example": "v3"},
}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_RUN_NUMBER = {
    "name": "number",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "example": "3"},
}
_RUN = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "example": "run.3"},
        "number": {"type": "integer"},
        "command": {"type": "array", "items": {"type": "string"}},
        "release": {"type": "integer"},
        "attach": {"type": "boolean"},
        "tty": {"type": "boolean"},
        "memory_mb": {"type": "integer"},
        "cpus": {"type": "number"},
        "state": {"type": "string", "enum": ["pending", "launched", "finished"]},
        "task_id": {"type": "string"},
        "exit_code": {"type": "integer", "nullable": True},
        "outcome": {"type": "string"},
    },
}
_RUNS = {"type": "array", "items": _RUN}
_INT_MAP = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, **_ERRORS}, **extra}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Berth API",
            "version": version,
            "description": "Every route but /healthz needs `Authorization: Bearer <token>`."
            ' Errors are {"error": {"code", "message"}}.',
        },
        "security": [{"token": []}],
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "Readiness: 200 once connected to ZooKeeper, else 503",
                    "security": [],
                    "responses": {
                        "200": _json({"type": "object"}),
                        "503": _json({"type": "object"}, "Not ready"),
                    },
                }
            },
            "/v1/info": {"get": _op("Server version and domain", {"200": _json(_ref("Info"))})},
            "/v1/openapi.json": {"get": _op("This document", {"200": _json({"type": "object"})})},
            "/v1/apps": {
                "get": _op("List apps", {"200": _json({"type": "array", "items": _ref("App")})}),
                "post": _op(
                    "Create an app (a random name if none is given); creates release v1",
                    {"201": _json(_ref("App"), "Created"), "409": _resp("Conflict")},
                    requestBody=_body(
                        {"type": "object", "properties": {"name": {"type": "string"}}}, False
                    ),
                ),
            },
            "/v1/apps/{app}": {
                "parameters": [_APP],
                "get": _op("App info with its formation", {"200": _json(_ref("App"))}),
                "delete": _op("Destroy an app and all it holds", {"200": _json({})}),
            },
            "/v1/apps/{app}/config": {
                "parameters": [_APP],
                "get": _op("Current config vars", {"200": _json(_STRING_MAP)}),
                "patch": _op(
                    "Set (string) or unset (null) config vars; creates a release",
                    {"200": _json({"type": "object"})},
                    requestBody=_body(
                        {
                            "type": "object",
                            "additionalProperties": {"type": "string", "nullable": True},
                        }
                    ),
                ),
            },
            "/v1/apps/{app}/releases": {
                "parameters": [_APP],
                "get": _op(
                    "Newest releases first (pending and failed ones too)",
                    {"200": _json({"type": "array", "items": _ref("Release")})},
                    parameters=[
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "default": 15},
                        }
                    ],
                ),
            },
            "/v1/apps/{app}/releases/{version}": {
                "parameters": [_APP, _VERSION],
                "get": _op("One release, with its config", {"200": _json(_ref("Release"))}),
            },
            "/v1/apps/{app}/builds": {
                "parameters": [_APP],
                "get": _op(
                    "The app's builds (git push), newest first, without logs",
                    {"200": _json({"type": "array", "items": _ref("Build")})},
                    parameters=[_query("limit", {"type": "integer", "minimum": 1, "maximum": 50})],
                ),
            },
            "/v1/apps/{app}/builds/{build_id}": {
                "parameters": [
                    _APP,
                    {
                        "name": "build_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "get": _op("One build with its log", {"200": _json(_ref("Build"))}),
            },
            "/git/{app}.git/info/refs": {
                "parameters": [
                    _APP,
                    _query(
                        "service",
                        {"type": "string", "enum": ["git-receive-pack", "git-upload-pack"]},
                    ),
                ],
                "get": _op(
                    "git smart HTTP: the refs (HTTP Basic, the token as password)",
                    {"200": _git("advertisement")},
                ),
            },
            "/git/{app}.git/git-receive-pack": {
                "parameters": [_APP],
                "post": _op(
                    "git push: store the pack, build, release; the build's output streams back"
                    " as side-band progress, then report-status",
                    {"200": _git("result")},
                ),
            },
            "/git/{app}.git/git-upload-pack": {
                "parameters": [_APP],
                "post": _op("git clone and fetch of the app's repository", {"200": _git("result")}),
            },
            "/v1/apps/{app}/rollback": {
                "parameters": [_APP],
                "post": _op(
                    "New release copying vN's artifact and config (default: the newest earlier"
                    " one that went live); 409 for a release that never went live",
                    {"201": _json(_ref("Release"), "Created"), "409": _resp("Conflict")},
                    requestBody=_body(
                        {"type": "object", "properties": {"version": {"type": "integer"}}}, False
                    ),
                ),
            },
            "/v1/apps/{app}/formation": {
                "parameters": [_APP],
                "get": _op("Process type → quantity", {"200": _json(_INT_MAP)}),
                "patch": _op(
                    "Scale process types", {"200": _json(_INT_MAP)}, requestBody=_body(_INT_MAP)
                ),
            },
            "/v1/apps/{app}/ps": {
                "parameters": [_APP],
                "get": _op(
                    "The app's processes (tasks) and formation",
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "formation": _INT_MAP,
                                    "tasks": {"type": "array", "items": _ref("Task")},
                                },
                            }
                        )
                    },
                ),
            },
            "/v1/apps/{app}/deploy": {
                "parameters": [_APP],
                "post": _op(
                    "A release from a local Docker image (its CMD becomes web unless process"
                    " types are given); the first deploy scales web=1",
                    {"201": _json(_ref("Release"), "Created")},
                    requestBody=_body(
                        {
                            "type": "object",
                            "required": ["image"],
                            "properties": {
                                "image": {"type": "string"},
                                "process_types": _STRING_MAP,
                            },
                        }
                    ),
                ),
            },
            "/v1/apps/{app}/ps/stop": {
                "parameters": [_APP],
                "post": _op(
                    "Stop one process (web.1 or a task id); it is replaced",
                    {"200": _json({"type": "object"})},
                    requestBody=_body(
                        {
                            "type": "object",
                            "required": ["task"],
                            "properties": {"task": {"type": "string"}},
                        }
                    ),
                ),
            },
            "/v1/apps/{app}/runs": {
                "parameters": [_APP],
                "get": _op("The app's one-off runs, oldest first", {"200": _json(_RUNS)}),
                "post": _op(
                    "Start a one-off run of the current release: 409 before any push or deploy",
                    {
                        "201": _json(_RUN, "Created"),
                        "409": {"$ref": "#/components/responses/Conflict"},
                    },
                    requestBody=_body(
                        {
                            "type": "object",
                            "required": ["command"],
                            "properties": {
                                "command": {
                                    "type": "array",
                                    "items": {"type": "string"},
                                    "minItems": 1,
                                    "maxItems": 256,
                                    "description": "argv, never a shell string",
                                },
                                "attach": {"type": "boolean", "default": True},
                                "tty": {"type": "boolean", "default": False},
                                "size": {
                                    "type": "object",
                                    "properties": {
                                        "memory": {"type": "string", "example": "512m"},
                                        "cpu": {"type": "number", "example": 0.5},
                                    },
                                },
                            },
                        }
                    ),
                ),
            },
            "/v1/apps/{app}/runs/{number}": {
                "parameters": [_APP, _RUN_NUMBER],
                "get": _op(
                    "One run: its state and, once finished, exit code", {"200": _json(_RUN)}
                ),
            },
            "/v1/apps/{app}/runs/{ref}/attach": {
                "parameters": [_APP, {**_RUN_NUMBER, "name": "ref"}],
                "get": _op(
                    "Websocket (Upgrade: websocket): the client's side of an attached run."
                    " Binary frames, first byte the channel: 0 stdin, 1 stdout, 2 stderr,"
                    " 3 stdin EOF, 4 resize {cols, rows}, 5 signal name, 6 exit {code},"
                    " 7 error {message}",
                    {
                        "101": {"description": "Switching to the websocket"},
                        "409": {"$ref": "#/components/responses/Conflict"},
                    },
                ),
            },
            "/v1/apps/{app}/runs/{ref}/rendezvous": {
                "parameters": [_APP, {**_RUN_NUMBER, "name": "ref"}],
                "get": _op(
                    "Websocket: the executor's side of an attached run, with the run's secret"
                    " as its bearer token (not an API token); the same frames",
                    {"101": {"description": "Switching to the websocket"}},
                ),
            },
            "/v1/apps/{app}/ps/restart": {
                "parameters": [_APP],
                "post": _op(
                    "Rolling restart of a process type (or all); or restart one process",
                    {"200": _json({"type": "object"})},
                    requestBody=_body(
                        {"type": "object", "properties": {"target": {"type": "string"}}}, False
                    ),
                ),
            },
            "/v1/apps/{app}/limits": {
                "parameters": [_APP],
                "get": _op("Memory and CPU per process type", {"200": _json({"type": "object"})}),
                "patch": _op(
                    "Set memory (512m, 1g) and cpu (0.5) per process type",
                    {"200": _json({"type": "object"})},
                    requestBody=_body({"type": "object"}),
                ),
            },
            "/v1/apps/{app}/checks": {
                "parameters": [_APP],
                "get": _op(
                    "Health check per process type: type (http, tcp, none), path, startup"
                    " seconds, and whether it is the default",
                    {"200": _json({"type": "object"})},
                ),
                "patch": _op(
                    'Set checks per process type ({"web": {"path": "/up"}});'
                    " null restores the default",
                    {"200": _json({"type": "object"})},
                    requestBody=_body({"type": "object"}),
                ),
            },
            "/v1/apps/{app}/routing": {
                "parameters": [_APP],
                "get": _op(
                    "The app's router settings: timeout (seconds, null for the router's"
                    " default) and https_only",
                    {"200": _json({"type": "object"})},
                ),
                "patch": _op(
                    "Change timeout (1-3600 s, null resets) and https_only",
                    {"200": _json({"type": "object"})},
                    requestBody=_body({"type": "object"}),
                ),
            },
            "/v1/apps/{app}/domains": {
                "parameters": [_APP],
                "get": _op(
                    "The app's custom domains, sorted by hostname",
                    {"200": _json({"type": "array", "items": _ref("Domain")})},
                ),
                "post": _op(
                    "Route a custom domain (www.example.com, or *.example.com) to the app;"
                    " 409 if this or another app has it already",
                    {"201": _json(_ref("Domain"), "Created"), "409": _resp("Conflict")},
                    requestBody=_body(
                        {
                            "type": "object",
                            "required": ["hostname"],
                            "properties": {"hostname": {"type": "string"}},
                        }
                    ),
                ),
            },
            "/v1/apps/{app}/domains/{hostname}": {
                "parameters": [
                    _APP,
                    {
                        "name": "hostname",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "example": "www.example.com"},
                    },
                ],
                "delete": _op(
                    "Stop routing a custom domain to the app (404 unless the app has it)",
                    {"200": _json({"type": "object"})},
                ),
            },
            "/v1/apps/{app}/drains": {
                "parameters": [_APP],
                "get": _op(
                    "The app's log drains in the order added, with logd's delivery stats"
                    " (null when logd does not answer)",
                    {"200": _json({"type": "array", "items": _ref("Drain")})},
                ),
                "post": _op(
                    "Send the app's log lines to syslog://host:port, syslog+tls://host:port"
                    " (RFC 5424, octet counting) or https://host/path (NDJSON batches);"
                    " 409 if the app has it, 422 for a bad URL or over 10 drains",
                    {"201": _json(_ref("Drain"), "Created"), "409": _resp("Conflict")},
                    requestBody=_body(
                        {
                            "type": "object",
                            "required": ["url"],
                            "properties": {"url": {"type": "string"}},
                        }
                    ),
                ),
                "delete": _op(
                    "Remove the drain with this URL (normalised like an added one); 404 unless"
                    " the app has it",
                    {"200": _json({"type": "object"})},
                    parameters=[
                        {
                            "name": "url",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                ),
            },
            "/v1/apps/{app}/drains/{drain}": {
                "parameters": [
                    _APP,
                    {
                        "name": "drain",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "example": "d.0123456789ab"},
                    },
                ],
                "delete": _op(
                    "Remove a drain by its id (404 unless the app has it)",
                    {"200": _json({"type": "object"})},
                ),
            },
            "/v1/apps/{app}/certs": {
                "parameters": [_APP],
                "get": _op(
                    "The app's TLS certificates (never their keys), sorted by name",
                    {"200": _json({"type": "array", "items": _ref("Certificate")})},
                ),
                "post": _op(
                    "Add a certificate (PEM chain and unencrypted PEM key) for names the app"
                    " has; 422 for a key that does not match, an expired certificate or a"
                    " name the app does not have",
                    {"201": _json(_ref("Certificate"), "Created")},
                    requestBody=_body(
                        {
                            "type": "object",
                            "required": ["certificate", "private_key"],
                            "properties": {
                                "certificate": {"type": "string"},
                                "private_key": {"type": "string"},
                            },
                        }
                    ),
                ),
            },
            "/v1/apps/{app}/certs/{hostname}": {
                "parameters": [
                    _APP,
                    {
                        "name": "hostname",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "example": "www.example.com"},
                    },
                ],
                "delete": _op(
                    "Remove the app's certificate named by, else listing, a hostname",
                    {"200": _json({"type": "object"})},
                ),
            },
            "/v1/apps/{app}/routes": {
                "parameters": [_APP],
                "get": _op(
                    "How the app is reached: its HTTP host names, then its TCP routes by port",
                    {"200": _json({"type": "array", "items": _ref("Route")})},
                ),
                "post": _op(
                    "Expose a process type on a router port (a TCP route); 409 if any app has"
                    " a route on that port",
                    {"201": _json(_ref("Route"), "Created"), "409": _resp("Conflict")},
                    requestBody=_body(
                        {
                            "type": "object",
                            "required": ["port", "process"],
                            "properties": {
                                "type": {"type": "string", "enum": ["tcp"]},
                                "port": {"type": "integer", "minimum": 1024, "maximum": 65535},
                                "process": {"type": "string", "example": "db"},
                                "proxy_protocol": {
                                    "type": "string",
                                    "enum": ["v1", "v2"],
                                    "nullable": True,
                                },
                            },
                        }
                    ),
                ),
            },
            "/v1/apps/{app}/routes/tcp/{port}": {
                "parameters": [
                    _APP,
                    {
                        "name": "port",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "example": 5432},
                    },
                ],
                "delete": _op(
                    "Remove the app's TCP route on this port (404 unless the app has it)",
                    {"200": _json({"type": "object"})},
                ),
            },
            "/v1/apps/{app}/logs": {
                "parameters": [_APP],
                "get": _op(
                    "The app's last log lines, oldest first, as NDJSON records (or Heroku's"
                    " text); with tail=1 the response stays open with new lines (a blank"
                    " line every second is a keepalive)",
                    {
                        "200": {
                            "description": "Log records",
                            "content": {
                                "application/x-ndjson": {"schema": _ref("LogRecord")},
                                "text/plain": {"schema": {"type": "string"}},
                            },
                        },
                        "503": _json(_ref("Error"), "The log service is away, or too many tails"),
                    },
                    parameters=[
                        _query(
                            "lines",
                            {"type": "integer", "minimum": 0, "maximum": 10000, "default": 100},
                        ),
                        _query("tail", {"type": "integer", "enum": [0, 1], "default": 0}),
                        _query("ps", {"type": "string", "example": "web.1"}),
                        _query(
                            "source",
                            {"type": "string", "enum": ["app", "router", "build", "berth"]},
                        ),
                        _query("since", {"type": "string", "example": "10m"}),
                        _query("grep", {"type": "string", "maxLength": 256}),
                        _query("format", {"type": "string", "enum": ["json", "text"]}),
                    ],
                ),
            },
            "/v1/tokens": {
                "get": _op(
                    "List tokens", {"200": _json({"type": "array", "items": _ref("Token")})}
                ),
                "post": _op(
                    "Create a token; the secret is in this response only",
                    {"201": _json(_ref("Token"), "Created")},
                    requestBody=_body(
                        {"type": "object", "properties": {"description": {"type": "string"}}},
                        False,
                    ),
                ),
            },
            "/v1/tokens/{token_id}": {
                "parameters": [
                    {
                        "name": "token_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "delete": _op(
                    "Revoke a token (not the last one)",
                    {"200": _json({}), "409": _resp("Conflict")},
                ),
            },
        },
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
            "responses": {
                name: _json(_ref("Error"), name)
                for name in ("Unauthorized", "NotFound", "Invalid", "Conflict")
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
                "Info": {
                    "type": "object",
                    "properties": {"version": {"type": "string"}, "domain": {"type": "string"}},
                },
                "App": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "pattern": "^[a-z][a-z0-9-]{1,29}$"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "release": {"type": "integer", "description": "the current release"},
                        "latest": {
                            "type": "integer",
                            "description": "the newest release written, when above the"
                            " current one (its release phase pending or failed)",
                        },
                        "web_url": {"type": "string"},
                        "formation": _INT_MAP,
                    },
                },
                "Release": {
                    "type": "object",
                    "properties": {
                        "app": {"type": "string"},
                        "version": {"type": "integer"},
                        "description": {"type": "string"},
                        "created_by": {"type": "string"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "artifact": {"type": "object", "nullable": True},
                        "process_types": _STRING_MAP,
                        "config_keys": {"type": "array", "items": {"type": "string"}},
                        "config": _STRING_MAP,
                        "status": {
                            "type": "string",
                            "enum": ["pending", "succeeded", "failed"],
                            "description": "pending while a push's release command runs;"
                            " failed if it failed (or a newer release was made meanwhile)",
                        },
                        "status_reason": {"type": "string"},
                        "current": {
                            "type": "boolean",
                            "description": "the app's current release (listings and info)",
                        },
                    },
                },
                "Build": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "example": "6566a1b2c3d4"},
                        "app": {"type": "string"},
                        "commit": {"type": "string"},
                        "builder": {"type": "string", "enum": ["dockerfile", "buildpacks", "auto"]},
                        "status": {"type": "string", "enum": ["building", "succeeded", "failed"]},
                        "created_by": {"type": "string"},
                        "started_at": {"type": "string", "format": "date-time"},
                        "finished_at": {"type": "string", "format": "date-time", "nullable": True},
                        "duration": {"type": "number", "nullable": True},
                        "release": {"type": "integer", "nullable": True},
                        "image": {"type": "string"},
                        "error": {"type": "string"},
                        "log": {"type": "string", "description": "builds/{build_id} only"},
                    },
                },
                "Task": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "process": {"type": "string"},
                        "index": {"type": "integer"},
                        "release": {"type": "integer"},
                        "state": {"type": "string"},
                        "healthy": {"type": "boolean", "nullable": True},
                        "uptime": {"type": "number", "nullable": True},
                        "exit_code": {"type": "integer", "nullable": True},
                        "message": {"type": "string"},
                        "hostname": {"type": "string"},
                        "port": {"type": "integer"},
                        "agent_id": {"type": "string"},
                    },
                },
                "Certificate": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "example": "www.example.com"},
                        "app": {"type": "string"},
                        "hostnames": {"type": "array", "items": {"type": "string"}},
                        "issuer": {"type": "string"},
                        "not_after": {"type": "string", "format": "date-time"},
                        "fingerprint": {"type": "string"},
                        "source": {"type": "string", "enum": ["manual", "acme"]},
                        "created_at": {"type": "string", "format": "date-time"},
                    },
                },
                "Domain": {
                    "type": "object",
                    "properties": {
                        "hostname": {"type": "string", "example": "www.example.com"},
                        "kind": {"type": "string", "enum": ["custom", "wildcard"]},
                        "app": {"type": "string"},
                        "created_at": {"type": "string", "format": "date-time"},
                    },
                },
                "Drain": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "example": "d.0123456789ab"},
                        "url": {"type": "string", "example": "syslog+tls://logs.example.com:6514"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "buffered": {"type": "integer", "nullable": True},
                        "delivered": {"type": "integer", "nullable": True},
                        "dropped": {"type": "integer", "nullable": True},
                        "status": {
                            "type": "string",
                            "nullable": True,
                            "enum": ["pending", "starting", "up", "retrying", None],
                        },
                        "last_error": {"type": "string", "nullable": True},
                    },
                },
                "Route": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "example": "tcp:5432"},
                        "type": {"type": "string", "enum": ["http", "tcp"]},
                        "host": {"type": "string", "description": "http routes"},
                        "port": {"type": "integer", "description": "tcp routes"},
                        "app": {"type": "string"},
                        "process": {"type": "string"},
                        "proxy_protocol": {
                            "type": "string",
                            "enum": ["v1", "v2"],
                            "nullable": True,
                        },
                        "created_at": {"type": "string", "format": "date-time"},
                    },
                },
                "LogRecord": {
                    "type": "object",
                    "properties": {
                        "ts": {"type": "string", "example": "2026-01-02T03:04:05.678901Z"},
                        "app": {"type": "string"},
                        "source": {"type": "string", "enum": ["app", "router", "build", "berth"]},
                        "process": {"type": "string", "example": "web.1"},
                        "stream": {"type": "string", "enum": ["stdout", "stderr"]},
                        "text": {"type": "string"},
                    },
                },
                "Token": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "description": {"type": "string"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "created_by": {"type": "string"},
                        "token": {"type": "string", "description": "only when created"},
                    },
                },
            },
        },
    }


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _git(kind: str) -> dict[str, Any]:
    return {
        "description": f"git's pkt-line {kind}",
        "content": {f"application/x-git-receive-pack-{kind}": {"schema": {"type": "string"}}},
    }


def _resp(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}
