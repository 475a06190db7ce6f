from __future__ import annotations

import base64
import json

from berth.framework.plan import Launch, Resources
from berth.framework.taskinfo import (
    HealthCheck,
    Payload,
    build_task_info,
    parse_task_id,
    task_env,
)


def payload() -> Payload:
    env = task_env({"SECRET": "s"}, "shop", "web", 1, 7, 31005)
    return Payload(
        "shop",
        "web",
        1,
        7,
        "shop:v7",
        None,
        env,
        31005,
        256,
        0.5,
        "inst-1",
        health=HealthCheck("http", "/up"),
    )


def test_task_info_for_one_launch() -> None:
    launch = Launch("o1", "a1", "host1", "shop", "web", 1, 7, 31005, Resources(0.5, 256.0))
    info = build_task_info(launch, "fw-1", payload(), executor_command=["/x/python", "-m", "e"])
    tid = info["task_id"]["value"]
    assert tid.startswith("shop.web.1.v7.")
    assert len(tid) <= 255
    assert "/" not in tid
    assert parse_task_id(tid) == ("shop", "web", 1, 7)
    assert info["name"] == "shop web.1 v7"
    assert info["executor"]["executor_id"] == {"value": tid}
    assert info["executor"]["command"] == {
        "shell": False,
        "value": "/x/python",
        "arguments": ["/x/python", "-m", "e"],
    }
    assert {
        "name": "ports",
        "type": "RANGES",
        "ranges": {"range": [{"begin": 31005, "end": 31005}]},
    } in info["resources"]
    assert info["kill_policy"] == {"grace_period": {"nanoseconds": 30_000_000_000}}
    assert info["executor"]["shutdown_grace_period"]["nanoseconds"] > 30_000_000_000
    labels = {x["key"]: x["value"] for x in info["labels"]["labels"]}
    assert labels == {
        "berth.app": "shop",
        "berth.process": "web",
        "berth.release": "7",
        "berth.instance": "inst-1",
    }
    decoded = Payload.decode(info["data"])
    assert decoded == payload()
    assert json.loads(base64.b64decode(info["data"]))["env"]["PORT"] == "31005"
    assert decoded.env["DYNO"] == "web.1"


def test_parse_task_id_rejects_foreign_ids() -> None:
    for bad in ("x", "a.b.c.d", "a.web.one.v1.x", "a.web.1.7.x", "a.web.1.vX.x"):
        assert parse_task_id(bad) is None
