from berth.framework.main import command

command(prog_name="berth framework")
