"""berth.executor: Berth's Mesos executor, one process per task on each agent, running the
task's container through the Docker SDK. Imports berth.framework's vocabulary, never berth.api
or berth.cli."""
