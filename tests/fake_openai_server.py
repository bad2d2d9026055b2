"""A local OpenAI-compatible chat-completions server for tests (http.server in a thread).

    with FakeOpenAIServer() as server:
        server.base_url          # http://127.0.0.1:PORT/v1
        server.fail_next(429)    # the next request gets HTTP 429 (then normal again)
        server.fail_next(500, times=10)
        server.malformed_next()  # the next reply is not JSON
        server.requests          # [(headers, body)] of every request received

It validates request bodies as the OpenAI API does (400 with an error object otherwise) and answers with
a real `chat.completion` object. The text is deterministic: the words of the last user message, reversed,
prefixed by the choice index and seed; max_tokens counts words; stop strings cut the text.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _validate(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model is required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            return f"invalid message: {m!r}"
    n = body.get("n", 1)
    if not isinstance(n, int) or n < 1:
        return "n must be a positive integer"
    for key in ("temperature", "top_p"):
        if key in body and not isinstance(body[key], (int, float)):
            return f"{key} must be a number"
    if "max_tokens" in body and (not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1):
        return "max_tokens must be a positive integer"
    if "seed" in body and not isinstance(body["seed"], int):
        return "seed must be an integer"
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        return "stop must be a string or a list of strings"
    unknown = set(body) - {"model", "messages", "n", "temperature", "top_p", "max_tokens", "seed", "stop", "stream"}
    if unknown:
        return f"unrecognized request arguments: {sorted(unknown)}"
    return None


def fake_text(body: dict, index: int) -> tuple[str, int, str]:
    """(text, completion tokens, finish_reason) of choice `index`."""
    last_user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
    words = [f"c{index}", f"s{body.get('seed', 0)}", *reversed(last_user.split())]
    limit = body.get("max_tokens", 10_000)
    finish = "length" if len(words) > limit else "stop"
    words = words[:limit]
    text = " ".join(words)
    stops = body.get("stop") or []
    for s in [stops] if isinstance(stops, str) else stops:
        if s in text:
            text, finish = text[: text.index(s)], "stop"
    return text, len(text.split()), finish


class FakeOpenAIServer:
    def __init__(self, model: str = "fake-model"):
        self.model = model
        self.requests: list[tuple[dict[str, str], Any]] = []
        self._failures: list[tuple[str, int]] = []  # ("status", code) | ("malformed", 0)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, payload: Any, raw: bytes | None = None):
                data = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    body = None
                with server._lock:
                    server.requests.append((dict(self.headers), body))
                    failure = server._failures.pop(0) if server._failures else None
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                if failure and failure[0] == "status":
                    return self._send(failure[1], {"error": {"message": f"injected {failure[1]}", "type": "server_error"}})
                if failure and failure[0] == "malformed":
                    return self._send(200, None, raw=b"<html>definitely not json")
                if self.headers.get("Content-Type", "").split(";")[0] != "application/json":
                    return self._send(400, {"error": {"message": "Content-Type must be application/json", "type": "invalid_request_error"}})
                problem = _validate(body)
                if problem:
                    return self._send(400, {"error": {"message": problem, "type": "invalid_request_error"}})
                choices, total = [], 0
                for i in range(body.get("n", 1)):
                    text, tokens, finish = fake_text(body, i)
                    total += tokens
                    choices.append({
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": finish,
                    })
                prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
                self._send(200, {
                    "id": f"chatcmpl-{len(server.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": choices,
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": total,
                              "total_tokens": prompt_tokens + total},
                })

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def fail_next(self, status: int, times: int = 1) -> None:
        with self._lock:
            self._failures.extend([("status", status)] * times)

    def malformed_next(self, times: int = 1) -> None:
        with self._lock:
            self._failures.extend([("malformed", 0)] * times)

    def start(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
