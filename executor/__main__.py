"""`python -m berth.executor`: the same program as the `berth-executor` console script
(main.py). Runs on the main thread; must not import flask, kazoo, berth.api or berth.cli."""

from __future__ import annotations

from berth.executor.main import main

if __name__ == "__main__":
    raise SystemExit(main())
