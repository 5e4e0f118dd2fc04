"""A recording HTTP server for tests: a tiny threaded server on loopback standing for a server of a
tenant's own. It records every request it receives (method, path, headers, body) and answers a chat
completion in OpenAI's shape that echoes the credentials it was sent; paths under ``/redirect/``
answer ``307`` to ``redirect_to``."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Recorder:
    def __init__(self, *, redirect_to: str | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.redirect_to = redirect_to
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with recorder._lock:
                    recorder.requests.append(
                        {"method": self.command, "path": self.path, "headers": headers, "body": body}
                    )
                if self.path.startswith("/redirect/") and recorder.redirect_to:
                    self.send_response(307)
                    self.send_header("location", recorder.redirect_to + self.path.removeprefix("/redirect"))
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                sent = headers.get("authorization") or headers.get("x-api-key") or ""
                reply = json.dumps(
                    {
                        "id": "chatcmpl-recorder",
                        "object": "chat.completion",
                        "created": 1,
                        "model": "recorder",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": f"echo {sent}"},
                                "finish_reason": "stop",
                            }
                        ],
                    }
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_POST = do_GET = do_PUT = _handle  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"recorder-{self.port}", daemon=True)
        self._thread.start()

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.requests)

    def header_values(self) -> list[str]:
        """Every header value of every request received, plus each path (where a key could be smuggled)."""
        return [v for r in self.received() for v in (*r["headers"].values(), r["path"])]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
