"""A small OpenAI-compatible HTTP server for tests: real HTTP, real `openai` client, no network.

Why: code that talks to an OpenAI-compatible API (rewriting, verifier agents, ...) should be tested
through the real client, over real HTTP, including its failure paths (429/500, timeouts, malformed
completions, Batch API lifecycles). Standard library only (``http.server``).

    with FakeOpenAIServer() as server:                     # 127.0.0.1, random free port
        client = openai.OpenAI(base_url=server.base_url, api_key="test")
        server.inject(status=429, headers={"Retry-After": "0"})      # the next chat call fails
        client.chat.completions.create(model="m", messages=[...])     # -> RateLimitError
        server.chat_requests                                          # bodies of chat calls

Endpoints:
    POST /v1/chat/completions      -> ``respond(messages)``: a string (the assistant content) or a
                                      dict (the whole assistant ``message``, e.g. with tool_calls).
    POST /v1/files                 multipart upload -> file object; GET /v1/files/{id}[/content].
    POST /v1/batches               -> batch object; GET /v1/batches/{id} reports "validating", then
                                      "in_progress", then, from retrieval number
                                      ``batch_polls_until_complete`` on, "completed", with the output / error files
                                      computed at completion through the same chat handler, so
                                      injections apply to batch lines too (matched by custom_id).
Every request is recorded in ``requests`` (method, path, headers, parsed JSON body or raw bytes).
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHAT_PATH = "/v1/chat/completions"
_UNSET = object()


def message_text(message: dict) -> str:
    """The text of a chat message whose content is a string or a list of {"type": "text"} parts."""
    content = message.get("content") or ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def rewritten(messages: list[dict]) -> str:
    """The default reply: "REWRITTEN: " + the last user message, upper-cased."""
    user = [m for m in messages if m.get("role") == "user"]
    return "REWRITTEN: " + message_text(user[-1] if user else messages[-1]).upper()


@dataclass
class Injection:
    """A scripted response, used instead of the normal one by the next ``times`` matching calls.

    status/headers/body: an HTTP reply as is (``body`` None with status >= 400: an OpenAI error body).
    content: with status 200 and no body, a normal completion whose content is this (None -> null).
    match: None (any call), a string (equal to the batch line's custom_id, or contained in the last
        user message) or a callable (request body, custom_id or None) -> bool.
    delay: seconds to sleep before replying (a slow server; make it exceed the client timeout).
    times: how many calls it serves; None: every matching call, for ever.
    """

    status: int = 200
    headers: dict = field(default_factory=dict)
    body: Any = None
    content: Any = _UNSET
    match: str | Callable | None = None
    delay: float = 0.0
    times: int | None = 1
    endpoint: str = CHAT_PATH

    def matches(self, path: str, body: Any, custom_id: str | None) -> bool:
        if path != self.endpoint:
            return False
        if self.match is None:
            return True
        if callable(self.match):
            return bool(self.match(body, custom_id))
        messages = body.get("messages", []) if isinstance(body, dict) else []
        return self.match == custom_id or any(self.match in message_text(m) for m in messages[-1:])


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict
    body: Any  # parsed JSON, or bytes


class FakeOpenAIServer:
    """OpenAI-compatible test server in a background thread; a context manager (start/stop).

    Args:
        respond: messages -> assistant content (str) or assistant message (dict). Default: `rewritten`.
        model: the "model" reported in completions (the requested one is echoed if this is None).
        batch_polls_until_complete: GET /v1/batches/{id} calls before a batch reports "completed";
            earlier calls report "validating" (the first) then "in_progress".
    """

    def __init__(
        self,
        respond: Callable[[list[dict]], str | dict] = rewritten,
        model: str | None = None,
        batch_polls_until_complete: int = 3,
    ):
        self.respond = respond
        self.model = model
        self.batch_polls_until_complete = batch_polls_until_complete
        self.requests: list[RecordedRequest] = []
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self._injections: list[Injection] = []
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------------- lifecycle and scripting

    def start(self) -> FakeOpenAIServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def inject(self, **kwargs) -> Injection:
        """Queue an `Injection` (see its fields); the first queued match wins. Returns it."""
        injection = Injection(**kwargs)
        with self._lock:
            self._injections.append(injection)
        return injection

    def clear_injections(self) -> None:
        with self._lock:
            self._injections.clear()

    @property
    def chat_requests(self) -> list[dict]:
        """JSON bodies of the POST /v1/chat/completions calls received so far."""
        with self._lock:
            return [r.body for r in self.requests if r.method == "POST" and r.path == CHAT_PATH]

    # -------------------------------------------------------------------- behaviour

    def _take_injection(self, path: str, body: Any, custom_id: str | None = None) -> Injection | None:
        with self._lock:
            for injection in self._injections:
                if injection.matches(path, body, custom_id):
                    if injection.times is not None:
                        injection.times -= 1
                        if injection.times <= 0:
                            self._injections.remove(injection)
                    return injection
        return None

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def chat(self, body: dict, custom_id: str | None = None) -> tuple[int, dict, Any]:
        """(status, headers, JSON body) for one chat-completions request, injections applied."""
        injection = self._take_injection(CHAT_PATH, body, custom_id)
        if injection is not None:
            time.sleep(injection.delay)
            if injection.status >= 400 or injection.body is not None:
                return injection.status, injection.headers, injection.body or _error_body(injection.status)
            if injection.content is not _UNSET:
                return (
                    200,
                    injection.headers,
                    self._completion(body, {"role": "assistant", "content": injection.content}),
                )
        reply = self.respond(body.get("messages", []))
        message = reply if isinstance(reply, dict) else {"role": "assistant", "content": reply}
        return 200, {}, self._completion(body, message)

    def _completion(self, request: dict, message: dict) -> dict:
        return {
            "id": self._new_id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model or request.get("model", "fake-model"),
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    def _add_file(self, content: bytes, filename: str, purpose: str) -> dict:
        file = {
            "id": self._new_id("file"),
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        self.files[file["id"]] = {**file, "content": content}
        return file

    def create_batch(self, body: dict) -> tuple[int, Any]:
        if body.get("input_file_id") not in self.files:
            return 404, _error_body(404, f"no file {body.get('input_file_id')!r}")
        batch = {
            "id": self._new_id("batch"),
            "object": "batch",
            "endpoint": body.get("endpoint"),
            "errors": None,
            "input_file_id": body["input_file_id"],
            "completion_window": body.get("completion_window"),
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(time.time()),
            "metadata": body.get("metadata"),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "_polls": 0,
        }
        self.batches[batch["id"]] = batch
        return 200, _public(batch)

    def retrieve_batch(self, batch_id: str) -> tuple[int, Any]:
        batch = self.batches.get(batch_id)
        if batch is None:
            return 404, _error_body(404, f"no batch {batch_id!r}")
        batch["_polls"] += 1
        if batch["status"] != "completed":
            if batch["_polls"] >= self.batch_polls_until_complete:
                self._complete(batch)
            elif batch["_polls"] > 1:
                batch["status"] = "in_progress"
        return 200, _public(batch)

    def _complete(self, batch: dict) -> None:
        """Run every line of the input file through `chat`; 200s go to the output file, others to errors."""
        outputs, errors = [], []
        for line in self.files[batch["input_file_id"]]["content"].decode().splitlines():
            if not line.strip():
                continue
            request = json.loads(line)
            status, _, body = self.chat(request.get("body", {}), custom_id=request.get("custom_id"))
            record = {
                "id": self._new_id("batch_req"),
                "custom_id": request.get("custom_id"),
                "response": {"status_code": status, "request_id": self._new_id("req"), "body": body},
                "error": None,
            }
            (outputs if status == 200 else errors).append(json.dumps(record))
        to_file = lambda lines: (
            self._add_file(("\n".join(lines) + "\n").encode(), "batch.jsonl", "batch_output")["id"] if lines else None
        )
        batch.update(
            status="completed",
            output_file_id=to_file(outputs),
            error_file_id=to_file(errors),
            request_counts={"total": len(outputs) + len(errors), "completed": len(outputs), "failed": len(errors)},
        )


def _public(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def _error_body(status: int, message: str | None = None) -> dict:
    return {
        "error": {
            "message": message or f"injected HTTP {status}",
            "type": "fake_error",
            "param": None,
            "code": str(status),
        }
    }


def _parse_multipart(content_type: str, data: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Form field name -> (filename, bytes) of a multipart/form-data body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + data
    )
    return {
        part.get_param("name", header="content-disposition"): (part.get_filename(), part.get_payload(decode=True))
        for part in message.iter_parts()
    }


def _make_handler(server: FakeOpenAIServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _reply(self, status: int, body: Any, headers: dict | None = None) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header(
                "Content-Type", "application/octet-stream" if isinstance(body, bytes) else "application/json"
            )
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, str(value))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> RecordedRequest:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw) if raw and "json" in self.headers.get("Content-Type", "") else raw
            except ValueError:
                body = raw
            request = RecordedRequest(self.command, self.path.split("?")[0], dict(self.headers), body)
            with server._lock:
                server.requests.append(request)
            return request

        def do_POST(self) -> None:
            request = self._record()
            path = request.path
            if path == CHAT_PATH:
                if not isinstance(request.body, dict):
                    return self._reply(400, _error_body(400, "body must be JSON"))
                status, headers, body = server.chat(request.body)
                return self._reply(status, body, headers)
            injection = server._take_injection(path, request.body)
            if injection is not None:
                time.sleep(injection.delay)
                return self._reply(injection.status, injection.body or _error_body(injection.status), injection.headers)
            with server._lock:
                if path == "/v1/files":
                    form = _parse_multipart(self.headers["Content-Type"], request.body)
                    filename, content = form["file"]
                    purpose = form.get("purpose", (None, b""))[1].decode()
                    return self._reply(200, server._add_file(content, filename or "upload", purpose))
                if path == "/v1/batches":
                    return self._reply(*server.create_batch(request.body))
            self._reply(404, _error_body(404, f"no route POST {path}"))

        def do_GET(self) -> None:
            path = self._record().path
            injection = server._take_injection(path, None)
            if injection is not None:
                time.sleep(injection.delay)
                return self._reply(injection.status, injection.body or _error_body(injection.status), injection.headers)
            parts = path.strip("/").split("/")  # v1, files|batches, id[, content]
            with server._lock:
                if parts[:2] == ["v1", "batches"] and len(parts) == 3:
                    return self._reply(*server.retrieve_batch(parts[2]))
                if parts[:2] == ["v1", "files"] and len(parts) in (3, 4) and parts[2] in server.files:
                    file = server.files[parts[2]]
                    if len(parts) == 4 and parts[3] == "content":
                        return self._reply(200, file["content"])
                    return self._reply(200, {k: v for k, v in file.items() if k != "content"})
            self._reply(404, _error_body(404, f"no route GET {path}"))

    return Handler
