"""Built by two buildpacks (.buildpacks): python made the virtualenv this runs in."""

import http.server
import os
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"multi: running in {sys.prefix}, {os.environ.get('MULTI', 'no MULTI')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), Handler).serve_forever()
