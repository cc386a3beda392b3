"""The demo's fake "internet" host for `make up`: an HTTPS server on 127.0.0.1 that answers
every request with the request head it received (so the demo can show what the proxy sent
upstream), and appends each head to a log file as one JSON line.

Usage: demo-upstream.py PORT CERT KEY LOG
"""

import http.server
import json
import ssl
import sys
import time


class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_any(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        head = f"{self.command} {self.path} {self.request_version}\n" + "".join(
            f"{name}: {value}\n" for name, value in self.headers.items()
        )
        with open(self.server.log_path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"time": time.time(), "head": head}) + "\n")
        body = head.encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = handle_any

    def log_message(self, *args):
        pass


def main():
    port, cert, key, log_path = sys.argv[1:5]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Echo)
    server.log_path = log_path
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
