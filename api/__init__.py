"""berth.api: the control plane's REST API (Flask, served by gunicorn). Imports berth.framework,
never berth.cli."""
