"""A loopback OpenAI-compatible server for tests: scripted replies, recorded requests.

    stub = StubServer().start()        # or the `llm_stub` / `make_llm_stub` fixtures (conftest.py)
    stub.reply("model m ...")          # a chat completion with this text
    stub.reply("...", finish_reason="length", usage={"prompt_tokens": 12})
    stub.raw(500, "overloaded")        # any status and body (bytes, str, or a dict sent as JSON)
    stub.redirect("http://127.0.0.1:9/v1/chat/completions")
    stub.reply("late", delay=5)        # wait before answering (cut short when the stub stops)
    client = OpenAIClient(stub.url, "m")   # stub.url ends in /v1
    stub.requests[0].body["messages"], stub.requests[0].headers["Authorization"]

Replies are served in order, one per request, whatever the path; when none is left the stub
answers 500. Only the standard library: http.server in a thread, on 127.0.0.1 and a free port.
"""
from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional, Union


class Headers(dict):
    """Header name (any case) -> value."""

    def __init__(self, items=()):
        super().__init__((k.lower(), v) for k, v in items)

    def __getitem__(self, name):
        return super().__getitem__(name.lower())

    def __contains__(self, name):
        return super().__contains__(name.lower())

    def get(self, name, default=None):
        return super().get(name.lower(), default)


@dataclass
class Recorded:
    method: str
    path: str
    headers: Headers  # header name (any case) -> value
    raw: bytes
    body: Optional[object]  # the parsed JSON body, or None


@dataclass
class Scripted:
    status: int = 200
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    delay: float = 0.0


def completion(text, finish_reason: Optional[str] = "stop", usage: Optional[dict] = None,
               model: str = "stub") -> dict:
    """A chat-completion object as OpenAI-compatible servers send it."""
    reply = {"id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": model,
             "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                          "finish_reason": finish_reason}]}
    if usage is not None:
        reply["usage"] = usage
    return reply


class StubServer:
    def __init__(self):
        self.requests: list[Recorded] = []
        self._queue: deque[Scripted] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- scripting
    def raw(self, status: int, body: Union[bytes, str, dict, list] = b"", *, headers: Optional[dict] = None,
            delay: float = 0.0) -> "StubServer":
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            headers = {"Content-Type": "application/json", **(headers or {})}
        if isinstance(body, str):
            body = body.encode("utf-8")
        with self._lock:
            self._queue.append(Scripted(status, body, dict(headers or {}), delay))
        return self

    def reply(self, text, *, finish_reason: Optional[str] = "stop", usage: Optional[dict] = None,
              delay: float = 0.0, headers: Optional[dict] = None) -> "StubServer":
        return self.raw(200, completion(text, finish_reason, usage), headers=headers, delay=delay)

    def redirect(self, location: str, status: int = 302) -> "StubServer":
        return self.raw(status, b"", headers={"Location": location})

    @property
    def pending(self) -> int:
        return len(self._queue)

    # -- lifecycle
    @property
    def port(self) -> int:
        assert self._server is not None, "start() the stub first"
        return self._server.server_address[1]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.origin}/v1"

    def start(self) -> "StubServer":
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                with stub._lock:
                    stub.requests.append(Recorded(self.command, self.path, Headers(self.headers.items()), raw, body))
                    scripted = stub._queue.popleft() if stub._queue else Scripted(
                        500, b'{"error": {"message": "the stub has no scripted reply left"}}',
                        {"Content-Type": "application/json"})
                if scripted.delay and stub._stopping.wait(scripted.delay):
                    return  # the stub is stopping: answer nothing
                try:
                    self.send_response(scripted.status)
                    headers = {"Content-Type": "application/json", **scripted.headers}
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(scripted.body)))
                    self.end_headers()
                    self.wfile.write(scripted.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            do_POST = do_GET = _serve  # noqa: N815

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "StubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
