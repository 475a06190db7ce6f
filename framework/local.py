"""Berth's local mode: no Mesos master, the same scheduler and executor code; only the driver
differs.

`LocalAgent` (local_agent.py) is this machine as the one agent: a loopback HTTP server speaking
the agent side of the Mesos v1 executor API, the executors' process manager and the status
update manager, checkpointed under its data dir so a restarted Berth adopts the executors still
running. `LocalSchedulerDriver` (local_driver.py) is the master: it has mesos.py's
`SchedulerDriver` surface, offers the machine's resources, validates launches and answers
reconciliation. Wiring, as the framework process does it:

    agent = LocalAgent(data_dir / "local")
    agent.start()
    driver = LocalSchedulerDriver(scheduler, framework_info, agent)
    driver.start()
    ...
    driver.stop()   # tasks keep running
    agent.stop()    # executors keep running; the next agent on this data dir adopts them

Must not import berth.executor, berth.api or berth.cli.
"""

from __future__ import annotations

from berth.framework.local_agent import AgentSink, LocalAgent
from berth.framework.local_driver import Bundle, LocalSchedulerDriver, machine_resources

__all__ = ["AgentSink", "Bundle", "LocalAgent", "LocalSchedulerDriver", "machine_resources"]
