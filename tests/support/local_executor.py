"""A small Mesos executor for local-mode tests, run by LocalAgent as a real process:
`[sys.executable, "tests/support/local_executor.py"]`. It speaks to its agent through Berth's
executor driver (`berth.executor.driver.MesosExecutorDriver`) and runs no container.

What it does with a task depends on `TEST_EXECUTOR_MODE` in the task's payload env
(TaskInfo.data is a taskinfo.Payload):
- "run" (default): TASK_STARTING, then TASK_RUNNING (with `{"port": …}` as data); on KILL,
  TASK_KILLING then TASK_KILLED, and exit 0; on SHUTDOWN, TASK_KILLED and exit 0;
- "fail": TASK_STARTING, then TASK_FAILED (message "told to fail", data `{"exit_code": 3}`),
  and exit 3;
- "crash": TASK_STARTING, TASK_RUNNING, then exit 3 at once, without a terminal update.
Before exiting (unless shut down) it waits ≤ 5 s for its last updates to be acknowledged.

It writes its pid to `$MESOS_SANDBOX/pid` and one JSON line per thing it hears to
`$MESOS_SANDBOX/events.jsonl`: registered, reregistered, launch, kill (with grace_ns),
acknowledged (with uuid), message, shutdown, disconnected.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from addict import Dict

from berth.executor.driver import Executor, ExecutorDriver, MesosExecutorDriver
from berth.framework.taskinfo import Payload


class ScriptedExecutor(Executor):
    def __init__(self, sandbox: Path) -> None:
        self._events = sandbox / "events.jsonl"
        self._lock = threading.Lock()
        self.running: dict[str, Dict] = {}
        self.done = threading.Event()
        self.exit_code = 0

    def _log(self, event: str, **fields: Any) -> None:
        with self._lock, open(self._events, "a", encoding="utf-8") as f:
            f.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")

    def _finish(self, code: int) -> None:
        self.exit_code = code
        self.done.set()

    def registered(
        self, driver: ExecutorDriver, executor_info: Dict, framework_info: Dict, agent_info: Dict
    ) -> None:
        self._log("registered", agent_id=agent_info.id.value)

    def reregistered(self, driver: ExecutorDriver, agent_info: Dict) -> None:
        self._log("reregistered", agent_id=agent_info.id.value)

    def disconnected(self, driver: ExecutorDriver) -> None:
        self._log("disconnected")

    def launchTask(self, driver: ExecutorDriver, task: Dict) -> None:
        task_id = str(task.task_id.value)
        payload = Payload.decode(str(task.data))
        mode = payload.env.get("TEST_EXECUTOR_MODE", "run")
        self._log("launch", task_id=task_id, mode=mode)
        driver.sendStatusUpdate({"task_id": {"value": task_id}, "state": "TASK_STARTING"})
        if mode == "fail":
            driver.sendStatusUpdate(
                {
                    "task_id": {"value": task_id},
                    "state": "TASK_FAILED",
                    "message": "told to fail",
                    "data": _data({"exit_code": 3}),
                }
            )
            self._finish(3)
            return
        self.running[task_id] = task
        driver.sendStatusUpdate(
            {
                "task_id": {"value": task_id},
                "state": "TASK_RUNNING",
                "data": _data({"port": payload.port}),
            }
        )
        if mode == "crash":
            os._exit(3)

    def killTask(self, driver: ExecutorDriver, task_id: Dict, kill_policy: Dict | None) -> None:
        grace = kill_policy.grace_period.nanoseconds if kill_policy else None
        self._log("kill", task_id=task_id.value, grace_ns=grace or None)
        if self.running.pop(str(task_id.value), None) is None:
            return
        driver.sendStatusUpdate({"task_id": task_id, "state": "TASK_KILLING"})
        driver.sendStatusUpdate(
            {"task_id": task_id, "state": "TASK_KILLED", "message": "killed as asked"}
        )
        self._finish(0)

    def acknowledged(self, driver: ExecutorDriver, task_id: Dict, uuid: str) -> None:
        self._log("acknowledged", task_id=task_id.value, uuid=uuid)

    def frameworkMessage(self, driver: ExecutorDriver, message: bytes) -> None:
        self._log("message", data=message.decode(errors="replace"))

    def shutdown(self, driver: ExecutorDriver) -> None:
        self._log("shutdown")
        for task_id in list(self.running):
            driver.sendStatusUpdate(
                {"task_id": {"value": task_id}, "state": "TASK_KILLED", "message": "shut down"}
            )
        self.running.clear()
        self._finish(0)


def _data(value: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def main() -> int:
    if sys.argv[1:2] == ["--cleanup"]:
        return 0  # the agent's orphan cleanup: this test executor starts no containers
    sandbox = Path(os.environ.get("MESOS_SANDBOX") or ".")
    (sandbox / "pid").write_text(str(os.getpid()))
    executor = ScriptedExecutor(sandbox)
    driver = MesosExecutorDriver(executor)
    driver.start()
    while not executor.done.wait(0.1):
        if not driver.running:
            return 1  # the agent was gone for longer than MESOS_RECOVERY_TIMEOUT
    deadline = time.monotonic() + 5.0  # after SHUTDOWN no acknowledgement can come
    while driver.unacknowledged_updates and driver.running and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.stop()
    return executor.exit_code


if __name__ == "__main__":
    sys.exit(main())
