"""berth.router: the router controller (HAProxy driven from ZooKeeper)."""
