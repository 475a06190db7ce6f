"""berth.framework: the control plane's vocabulary (model, errors, state) and, later, the scheduler.

Imports no other berth package: api, cli, router and executor import from here, never the
reverse (an import-linter contract in setup.cfg keeps it so).
"""
