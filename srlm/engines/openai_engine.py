"""Chat completions from an OpenAI-compatible endpoint (OpenAI, vLLM's server, llama.cpp, ...): the teacher.

Standard library only (urllib + a thread pool). One POST {base_url}/chat/completions per prompt, with
`n` samples in it; prompts run `concurrency` at a time and come back in input order.

    engine = OpenAIChatEngine(OpenAIEngineSettings(base_url="http://127.0.0.1:8000/v1", model="qwen", api_key_env=None))
    outs = engine.generate(["Explain ..."], SamplingParams(n=2, temperature=0.7, max_new_tokens=256))

- The API key is read from the environment variable named by `api_key_env` (never from config files) and
  sent as `Authorization: Bearer ...`; no message, log line or error carries it.
- 429, 5xx, timeouts and connection errors are retried `max_retries` times with exponential backoff
  (honouring Retry-After); any other HTTP error, and a response that is not a chat completion, raise
  `OpenAIEngineError` with the status and the start of the body.
- finish_reason: "stop" and "length" as the server says; any other value (e.g. "content_filter") is passed
  through as is, a missing one becomes "unknown".
- n_tokens: the server's usage.completion_tokens when n == 1; with n > 1, usage counts all choices
  together, and each completion gets a share proportional to its text length (an estimate). 0 without usage.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

from srlm.engines.types import Completion, GenerationOutput, Prompt, SamplingParams

_RETRY_STATUS = {408, 409, 429}
_BODY_PREVIEW = 300


class OpenAIEngineError(RuntimeError):
    """A request to the endpoint failed for good; the message names the URL and the status."""


@dataclass
class OpenAIEngineSettings:
    base_url: str                            # e.g. http://127.0.0.1:8000/v1 (…/chat/completions is appended)
    model: str                               # the endpoint's model name
    api_key_env: str | None                  # catalyst.teacher.api_key_env: the env var holding the key; None or unset: no auth
    timeout_s: float = 120                   # per request
    max_retries: int = 3                     # retries after the first try (429 / 5xx / connection errors)
    concurrency: int = 4                     # requests in flight
    retry_backoff_s: float = 1.0             # first retry waits this long, doubling after each

    def __post_init__(self) -> None:
        if not self.base_url:
            raise ValueError("OpenAIEngineSettings.base_url is empty")
        if not self.model:
            raise ValueError("OpenAIEngineSettings.model is empty")
        if self.concurrency < 1 or self.max_retries < 0:
            raise ValueError("concurrency must be >= 1 and max_retries >= 0")


class _Retryable(Exception):
    def __init__(self, what: str, wait: float | None = None):
        super().__init__(what)
        self.wait = wait


class OpenAIChatEngine:
    def __init__(self, config: OpenAIEngineSettings):
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"

    # ---------------------------------------------------------------------------------------- requests

    def _api_key(self) -> str | None:
        if not self.config.api_key_env:
            return None
        return os.environ.get(self.config.api_key_env) or None

    def _scrub(self, text: str) -> str:
        key = self._api_key()
        return text.replace(key, "***") if key else text

    def _payload(self, prompt: Prompt, params: SamplingParams) -> dict[str, Any]:
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
        payload: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
            "seed": params.seed,
        }
        if params.stop:
            payload["stop"] = list(params.stop)
        return payload

    def _post_once(self, body: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = self._scrub(exc.read().decode("utf-8", "replace")[:_BODY_PREVIEW])
            if exc.code in _RETRY_STATUS or exc.code >= 500:
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                wait = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
                raise _Retryable(f"HTTP {exc.code}: {detail}", wait) from exc
            raise OpenAIEngineError(f"POST {self.url} failed: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Retryable(f"{type(exc).__name__}: {self._scrub(str(reason))}") from exc
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            preview = self._scrub(raw[:_BODY_PREVIEW].decode("utf-8", "replace"))
            raise OpenAIEngineError(f"malformed response from {self.url}: not JSON ({exc}); body starts: {preview!r}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
            preview = self._scrub(json.dumps(data)[:_BODY_PREVIEW])
            raise OpenAIEngineError(f"malformed response from {self.url}: no choices; body starts: {preview}")
        return data

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(payload).encode("utf-8")
        for attempt in range(self.config.max_retries + 1):
            try:
                return self._post_once(body)
            except _Retryable as exc:
                if attempt == self.config.max_retries:
                    raise OpenAIEngineError(
                        f"POST {self.url} failed after {attempt + 1} tries: {exc}"
                    ) from exc
                wait = exc.wait if exc.wait is not None else self.config.retry_backoff_s * (2**attempt)
                time.sleep(min(wait, 60.0))
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------------------------------ parsing

    def _parse(self, data: dict[str, Any], params: SamplingParams) -> list[Completion]:
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
        texts, reasons = [], []
        for choice in choices:
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict) or not isinstance(message.get("content", ""), (str, type(None))):
                raise OpenAIEngineError(
                    f"malformed response from {self.url}: a choice has no message.content; "
                    f"body starts: {self._scrub(json.dumps(data)[:_BODY_PREVIEW])}"
                )
            texts.append(message.get("content") or "")
            reason = choice.get("finish_reason")
            reasons.append(str(reason) if reason else "unknown")
        if len(texts) != params.n:
            raise OpenAIEngineError(f"{self.url} returned {len(texts)} choices for n={params.n}")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        total = usage.get("completion_tokens")
        if not isinstance(total, int):
            counts = [0] * len(texts)
        elif len(texts) == 1:
            counts = [total]
        else:
            chars = sum(len(t) for t in texts) or 1
            counts = [round(total * len(t) / chars) for t in texts]
        return [Completion(text=t, n_tokens=c, finish_reason=r) for t, c, r in zip(texts, counts, reasons)]

    # ---------------------------------------------------------------------------------------- interface

    def generate(
        self, prompts: Sequence[Prompt], params: SamplingParams, adapter: str | None = None
    ) -> list[GenerationOutput]:
        if adapter is not None:
            raise ValueError("the OpenAI-compatible engine cannot apply a LoRA adapter (adapter must be None)")

        def one(index: int) -> GenerationOutput:
            data = self._post(self._payload(prompts[index], params))
            return GenerationOutput(prompt_index=index, completions=self._parse(data, params))

        if not prompts:
            return []
        with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(prompts))) as pool:
            return list(pool.map(one, range(len(prompts))))
