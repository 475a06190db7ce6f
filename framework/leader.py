"""Leader election for `berth framework`: one leader per Berth (per ZooKeeper chroot), the
others wait. With state.py, the only kazoo user.

kazoo's `Election` makes a contender leader and calls a function, but never interrupts it: a
leader whose session is suspended or lost would go on acting while another one takes over
(Marathon's worst class of bug). So the leader runs with a *fence*: an Event set the moment
the connection is SUSPENDED or LOST (or `stop` is set). The leading code must check it and stop
acting at once; `berth framework` then exits for its supervisor to restart it, which is the
simplest correct recovery (the Mesos framework keeps its tasks through failover).

Threads: `run` blocks the calling thread; kazoo's thread only sets Events.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kazoo.client import KazooClient
from kazoo.protocol.states import KazooState
from kazoo.recipe.election import Election

from berth.framework.errors import Unavailable
from berth.framework.state import ensure_chroot

log = logging.getLogger(__name__)

ELECTION_PATH = "/framework/election"


class Leadership:
    def __init__(self, hosts: str, chroot: str, identifier: str) -> None:
        self._hosts, self._chroot = hosts, chroot
        self._identifier = identifier
        self._fence = threading.Event()
        self._zk = KazooClient(hosts=f"{hosts}{chroot}", timeout=10.0)
        self._zk.add_listener(self._on_state)

    def _on_state(self, state: str) -> None:
        # kazoo's thread: record, never block.
        if state in (KazooState.SUSPENDED, KazooState.LOST):
            self._fence.set()

    def contenders(self) -> list[str]:
        return list(Election(self._zk, ELECTION_PATH).contenders())

    def run(self, lead: Callable[[threading.Event], None], stop: threading.Event) -> bool:
        """Wait to be leader, then call `lead(fence)`; return when it returns. Returns False
        if leadership was fenced off (connection suspended or lost) rather than given up."""
        ensure_chroot(self._hosts, self._chroot)
        try:
            self._zk.start(timeout=15)
        except self._zk.handler.timeout_exception:
            raise Unavailable("ZooKeeper did not answer: cannot run for leader") from None
        self._zk.ensure_path(ELECTION_PATH)
        election = Election(self._zk, ELECTION_PATH, self._identifier)
        watcher = threading.Thread(
            target=self._cancel_on, args=(stop, election), name="leader-stop", daemon=True
        )
        watcher.start()
        fenced = False
        try:
            log.info("waiting to lead", extra={"contender": self._identifier})
            # Election.run would release its lock on the way out, which retries for as long as
            # the connection is gone; so take the election's lock directly.
            if election.lock.acquire() and not (stop.is_set() or self._fence.is_set()):
                log.info("leading", extra={"leader": self._identifier})
                lead(self._fence)
                fenced = self._fence.is_set() and not stop.is_set()
                if not fenced:
                    election.lock.release()
        finally:
            self._fence.set()  # wakes the watcher thread
            watcher.join()
            # Closing the session removes our ephemeral election node even if we did not
            # release it (kazoo would otherwise retry the release over a dead connection).
            self._zk.stop()
            self._zk.close()
        if fenced:
            log.warning("leadership fenced off: the ZooKeeper connection was lost")
        return not fenced

    def _cancel_on(self, stop: threading.Event, election: Election) -> None:
        """Leave the election (if still waiting) once stop or the fence is set."""
        while not (stop.wait(0.2) or self._fence.is_set()):
            pass
        self._fence.set()
        election.cancel()
