"""A Procfile-only app: the run image's Python and its standard library, nothing built."""

import http.server
import os


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"procfile: hello from {os.environ.get('DYNO')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), Handler).serve_forever()
