from berth.api.main import command

command(prog_name="berth api")
