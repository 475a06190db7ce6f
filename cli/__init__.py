"""berth.cli: the `berth` command. Speaks HTTP to the API only: imports nothing server-side
(an import-linter contract keeps it so); server commands join the group as entry points."""
