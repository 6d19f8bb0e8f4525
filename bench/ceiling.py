"""The ceiling the proxy is measured against: a bare stdlib `ThreadingHTTPServer` answering
every GET with one fixed body over HTTP/1.1 keep-alive (also the benchmark's upstream).

`python -m bench.ceiling PORT SIZE` serves until killed; each response is one whole write and
the listen backlog is 1024, as the proxy's, so only the request handling differs.
"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class CeilingServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def handler_for(body: bytes) -> type[BaseHTTPRequestHandler]:
    reply = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: max-age=3600\r\n"
             b"Content-Length: %d\r\n\r\n%b" % (len(body), body))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def main(argv: list[str]) -> int:
    port, size = int(argv[0]), int(argv[1])
    CeilingServer(("127.0.0.1", port), handler_for(b"x" * size)).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
