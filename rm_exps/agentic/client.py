"""One chat client per agent role (router, fact checker, constraint analyzer, coder, judge).

Any OpenAI-compatible endpoint: each role names its model, base URL and the environment variable
holding its key (keys never go into plans or config.json). Calls have an explicit timeout, are
retried with backoff (rm_exps.chat_api), run at most `concurrency` at a time per role, and fail
with a typed LLMError, never a placeholder string. Replies are cached on disk by
(model, messages, parameters), so a rerun makes no calls, and identical requests in flight at the
same time are sent once.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rm_exps.chat_api import (
    MalformedCompletion,
    call_with_retries,
    completion_content,
    create_chat_completion,
    short_error,
)
from rm_exps.outputs import write_text_atomic


class LLMError(RuntimeError):
    """A role's model could not give a usable reply."""

    def __init__(self, role: str, message: str):
        self.role = role
        super().__init__(f"{role}: {message}")


class LLMConfigError(LLMError):
    """The role cannot be called at all (no key, no model)."""


class LLMRequestError(LLMError):
    """The request failed after its retries (or with a status that is not retried: 400/401/403/404)."""

    def __init__(self, role: str, message: str, status: int | None):
        self.status = status
        super().__init__(role, message)


class LLMResponseError(LLMError):
    """The reply arrived but is unusable (malformed body, empty content, unparsable answer)."""


class Endpoint(BaseModel):
    """Where and how one role calls its model."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("gpt-4o-mini", description="Model name sent to the API.")
    base_url: str | None = Field(None, description="API base URL; null: $OPENAI_BASE_URL, else the OpenAI API.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    temperature: float = Field(0.0, description="Sampling temperature.")
    timeout: float = Field(60.0, gt=0, description="Seconds per HTTP request.")
    max_retries: int = Field(4, ge=0, description="Retries on timeouts, connection errors, 408/409/429, 5xx.")
    retry_base_delay: float = Field(1.0, ge=0, description="First backoff delay in seconds (doubled per retry).")
    concurrency: int = Field(4, ge=1, description="Requests in flight at once for this role.")


class ResponseCache:
    """Replies on disk, one JSON file per (model, messages, parameters) key; safe across threads and
    processes (atomic rename). The base URL is not part of the key: a model name is the identity."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()

    @staticmethod
    def key(request: dict) -> str:
        return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, request: dict) -> str | None:
        path = self._path(self.key(request))
        try:
            return json.loads(path.read_text())["content"]
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def put(self, request: dict, content: str) -> None:
        write_text_atomic(
            self._path(self.key(request)), json.dumps({"request": request, "content": content}, ensure_ascii=False)
        )


class ChatClient:
    """`complete(messages, max_tokens)` -> the assistant text, for one role."""

    def __init__(self, role: str, endpoint: Endpoint, cache: ResponseCache | None = None):
        self.role = role
        self.endpoint = endpoint
        self.cache = cache
        self.calls = 0  # HTTP requests sent (retries included; cache hits excluded)
        self._slots = threading.BoundedSemaphore(endpoint.concurrency)
        self._client: Any = None
        self._lock = threading.Lock()
        self._inflight: dict[str, threading.Event] = {}

    def _openai(self) -> Any:
        with self._lock:
            if self._client is None:
                import openai

                key = os.environ.get(self.endpoint.api_key_env)
                if not key:
                    raise LLMConfigError(
                        self.role, f"no API key: set the environment variable {self.endpoint.api_key_env}"
                    )
                self._client = openai.OpenAI(
                    api_key=key,
                    base_url=self.endpoint.base_url or os.environ.get("OPENAI_BASE_URL"),
                    timeout=self.endpoint.timeout,
                    max_retries=0,
                )
            return self._client

    def complete(self, messages: list[dict], max_tokens: int, temperature: float | None = None) -> str:
        """The reply's text. Raises LLMRequestError, LLMResponseError or LLMConfigError.

        With a cache, identical requests in flight at once are sent once: the others wait for it."""
        request = {
            "model": self.endpoint.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": self.endpoint.temperature if temperature is None else temperature,
        }
        if self.cache is None:
            return self._send(request)
        key = self.cache.key(request)
        while (cached := self.cache.get(request)) is None:
            with self._lock:
                pending = self._inflight.get(key)
                if pending is None:
                    self._inflight[key] = threading.Event()
            if pending is not None:
                pending.wait()  # then read the cache (if that call failed, try ourselves)
                continue
            try:
                content = self._send(request)
                self.cache.put(request, content)
                return content
            finally:
                with self._lock:
                    self._inflight.pop(key).set()
        return cached

    def _send(self, request: dict) -> str:
        import openai

        client = self._openai()

        def send() -> dict:
            with self._lock:
                self.calls += 1
            return create_chat_completion(client, request)

        with self._slots:
            try:
                return completion_content(
                    call_with_retries(send, self.role, self.endpoint.max_retries, self.endpoint.retry_base_delay)
                )
            except MalformedCompletion as e:
                raise LLMResponseError(self.role, str(e)) from e
            except openai.APIError as e:
                raise LLMRequestError(self.role, short_error(e), getattr(e, "status_code", None)) from e
