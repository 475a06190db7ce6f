from berth.router.main import command

command(prog_name="berth router")
