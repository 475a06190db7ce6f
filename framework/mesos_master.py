"""Finding the leading Mesos master: `host:5050` as given, or from ZooKeeper for
`zk://host:2181[,host:2181]/mesos`, where Mesos masters register as sequential znodes
`json.info_<n>` holding their MasterInfo as JSON; the lowest sequence leads.

A kazoo adapter like state.py (its own short-lived client, on the Mesos ZooKeeper, which need
not be Berth's). Called from the driver's thread before each subscription.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoNodeError

from berth.framework.errors import Invalid, Unavailable

PREFIX = "json.info_"


def resolve(master: str, timeout: float = 10.0) -> str:
    """`host:port` of the leading master."""
    if not master.startswith("zk://"):
        return master
    parts = urlsplit(master)
    if not parts.netloc or not parts.path.strip("/"):
        raise Invalid(f"--master {master!r}: expected zk://HOST:PORT[,HOST:PORT…]/PATH")
    client = KazooClient(hosts=parts.netloc, timeout=timeout)
    try:
        client.start(timeout=timeout)
        path = "/" + parts.path.strip("/")
        try:
            children = [c for c in client.get_children(path) if c.startswith(PREFIX)]
        except NoNodeError:
            children = []
        if not children:
            raise Unavailable(f"no Mesos master is registered under {master}")
        leader = min(children, key=lambda c: int(c[len(PREFIX) :]))
        data, _ = client.get(f"{path}/{leader}")
    except client.handler.timeout_exception:
        raise Unavailable(f"the Mesos ZooKeeper at {parts.netloc} did not answer") from None
    except KazooException as exc:
        raise Unavailable(f"cannot read the Mesos masters at {master}: {exc!r}") from None
    finally:
        client.stop()
        client.close()
    info = json.loads(data)
    address = info.get("address") or {}
    host = address.get("hostname") or address.get("ip") or info.get("hostname")
    port = address.get("port") or info.get("port") or 5050
    if not host:
        raise Unavailable(f"the leading Mesos master's record at {master} has no address")
    return f"{host}:{port}"
