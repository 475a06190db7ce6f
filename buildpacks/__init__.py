"""berth.buildpacks: turning pushed source into images. Today: the stack (`stack.py`), the
Debian trixie build and run images every build starts from. The Heroku-style buildpacks
(`buildpacks/<name>/bin/*`) and `build.py`, which runs them in a build container, come later.
Imports berth.framework only; only server-side entry points import it (never berth.cli)."""
