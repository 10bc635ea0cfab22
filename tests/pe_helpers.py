"""Test helpers for Private Evolution: a small in-process OpenAI-compatible server, fake backends."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FakeOpenAI:
    """OpenAI-compatible endpoints on 127.0.0.1: GET /v1/models, POST /v1/chat/completions.

    `script` is a list of HTTP statuses returned (one per chat request) before normal answers;
    `fail_after` makes every chat request after that many answered ones fail with 500; `answer`
    maps a prompt to the reply text; `delay` holds each request (to observe concurrency).
    """

    models: tuple[str, ...] = ("tiny",)
    list_models: bool = True
    script: list[int] = field(default_factory=list)
    fail_after: int | None = None
    answer: Callable[[str], str] = lambda prompt: "synthetic " + hashlib.sha1(prompt.encode()).hexdigest()[:8]
    delay: float = 0.0
    chat_requests: int = 0
    answered: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    prompts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models") and fake.list_models:
                    self._send(200, {"object": "list", "data": [
                        {"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in fake.models]})
                else:
                    self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": "not found"}})
                    return
                with fake._lock:
                    fake.chat_requests += 1
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    status = fake.script.pop(0) if fake.script else 200
                    if fake.fail_after is not None and fake.answered >= fake.fail_after:
                        status = 500
                try:
                    if fake.delay:
                        time.sleep(fake.delay)
                    if body.get("model") not in fake.models:
                        self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist",
                                                   "type": "invalid_request_error", "code": "model_not_found"}})
                        return
                    if status != 200:
                        self._send(status, {"error": {"message": f"scripted {status}", "type": "server_error"}},
                                   {"Retry-After": "0"} if status == 429 else None)
                        return
                    prompt = body["messages"][-1]["content"]
                    with fake._lock:
                        fake.answered += 1
                        fake.prompts.append(prompt)
                    text = fake.answer(prompt)
                    self._send(200, {
                        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HashEmbedder:
    """A deterministic stand-in for a sentence embedder (bag of hashed words, L2-normalised)."""

    name = "hash-embedder"
    device = "cpu"

    def __init__(self, dim: int = 32) -> None:
        self.dim = dim

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)


class EchoBackend:
    """A generator backend that answers from a function of the prompt and counts calls."""

    name = "echo"

    def __init__(self, answer: Callable[[str, int], str] | None = None) -> None:
        self.calls = 0
        self.answer = answer or (lambda prompt, n: f"text {n} " + hashlib.sha1(prompt.encode()).hexdigest()[:6])

    def generate(self, requests: list[Any], on_answer: Callable[[int, str], None] | None = None) -> list[str]:
        out = []
        for i, r in enumerate(requests):
            self.calls += 1
            text = self.answer(r.prompt, self.calls)
            if on_answer is not None:
                on_answer(i, text)
            out.append(text)
        return out
