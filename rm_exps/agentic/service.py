"""The verifiers as an HTTP service (FastAPI): score an instruction's candidates, for RL or BoN callers.

    RM_AGENTIC_API_KEYS=key1,key2 OPENAI_API_KEY=... \
        python -m rm_exps.agentic.service --config agent.json --host 127.0.0.1 --port 8000

Endpoints: POST /v1/score (API key in `Authorization: Bearer <key>` or `X-API-Key`), GET /health,
GET /openapi.json and /docs. Requests larger than --max_body_bytes get 413, bad JSON or fields 422 (also
non-finite rm_scores: NaN, Infinity, 1e400),
a missing or wrong key 401; at most --max_concurrency requests are scored at once, and a request
that waits longer than --queue_timeout for a slot gets 503. Request bodies are never logged.
Checker code generated from (untrusted) instructions runs in rm_exps.agentic.sandbox; read its
limits before exposing the service beyond localhost.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rm_exps.agentic.agent import RewardAgent
from rm_exps.agentic.config import AgentConfig, config_errors

KEYS_ENV = "RM_AGENTIC_API_KEYS"
MAX_CANDIDATES = 64


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instruction: str = Field(..., min_length=1, description="The prompt the candidates answer.")
    candidates: list[str] = Field(..., min_length=1, max_length=MAX_CANDIDATES, description="Responses to score.")
    verifiers: list[Literal["instruction_following", "factuality"]] | None = Field(
        None, description="Verifiers to run; null: the router decides."
    )
    # finite only: JSON parsing reads NaN, Infinity and 1e400 (inf), and a NaN would win every comparison it is in
    rm_scores: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(
        None,
        description="Reward-model scores of the candidates (finite numbers); if given, the judger's combined "
        "scores are returned too.",
    )

    @model_validator(mode="after")
    def _aligned(self) -> ScoreRequest:
        if self.rm_scores is not None and len(self.rm_scores) != len(self.candidates):
            raise ValueError(f"rm_scores has {len(self.rm_scores)} values for {len(self.candidates)} candidates")
        return self


class SignalOut(BaseModel):
    scores: list[float | None] = Field(description="Per candidate, in request order; null: not scored.")
    details: dict[str, Any]
    errors: list[str]


class Combined(BaseModel):
    scores: list[float] = Field(description="weighted_sum: combined scores; llm: knockout rounds survived.")
    best: int | None = Field(description="Index of the best candidate; null: the llm judger failed (see error).")
    tied: bool
    used: list[str]
    dropped: dict[str, str]
    error: str | None = None


class ScoreResponse(BaseModel):
    routed: list[str] = Field(description="Verifiers that ran.")
    signals: dict[str, SignalOut]
    errors: list[str]
    combined: Combined | None = None


class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes` (declared or streamed), before the app reads it."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._reject(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._reject(scope, receive, send)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: dict, receive: Any, send: Any) -> None:
        response = JSONResponse({"detail": f"request body larger than {self.max_bytes} bytes"}, status_code=413)
        await response(scope, receive, send)


def _finite_json(value: Any) -> Any:
    """`value` with every non-finite float replaced by its text ('nan', 'inf')."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def create_app(
    agent: RewardAgent,
    api_keys: Sequence[str],
    max_body_bytes: int = 1_000_000,
    max_concurrency: int = 4,
    queue_timeout: float = 30.0,
) -> FastAPI:
    keys = [k.encode() for k in api_keys if k]
    if not keys:
        raise ValueError("the service needs at least one API key")
    app = FastAPI(
        title="rm_exps agentic verifiers",
        version="1",
        description="Verifiable correctness signals (instruction following, factuality) for candidate responses.",
    )
    slots = asyncio.Semaphore(max_concurrency)

    def authorized(request: Request) -> None:
        given = (
            request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        )
        if not any(hmac.compare_digest(given.encode(), key) for key in keys):
            raise HTTPException(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "verifiers": list(agent.verifiers)}

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        dependencies=[Depends(authorized)],
        responses={
            401: {"description": "Missing or invalid API key"},
            413: {"description": "Body too large"},
            503: {"description": "All scoring slots busy"},
        },
    )
    async def score(body: ScoreRequest) -> ScoreResponse:
        try:
            await asyncio.wait_for(slots.acquire(), queue_timeout)
        except TimeoutError:
            raise HTTPException(503, "busy: every scoring slot is taken", headers={"Retry-After": "5"}) from None
        try:
            result = await asyncio.to_thread(agent.verify, body.instruction, body.candidates, body.verifiers)
        finally:
            slots.release()
        out = result.to_dict()
        if body.rm_scores is not None:
            j = agent.judge(result, body.rm_scores)
            out["combined"] = {
                "scores": j.scores,
                "best": j.best,
                "tied": j.tied,
                "used": j.used,
                "dropped": j.dropped,
                "error": j.error,
            }
        return ScoreResponse(**out)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own 422, except that echoed inputs such as NaN (refused rm_scores) are written as strings:
        # a JSON response cannot hold them
        return JSONResponse({"detail": _finite_json(jsonable_encoder(exc.errors()))}, status_code=422)

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m rm_exps.agentic.service",
        description=__doc__.split("\n\n")[0],
        epilog=f"Clients send one of the API keys listed in {KEYS_ENV} (comma-separated; required).",
        allow_abbrev=False,
    )
    p.add_argument(
        "--config", help="JSON file of agent settings (rm_exps.agentic.config.AgentConfig); default: all defaults."
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    p.add_argument(
        "--max_body_bytes", type=int, default=1_000_000, help="larger requests get 413 (default: %(default)s)"
    )
    p.add_argument("--max_concurrency", type=int, default=4, help="requests scored at once (default: %(default)s)")
    p.add_argument(
        "--queue_timeout",
        type=float,
        default=30.0,
        help="seconds a request may wait for a slot before it gets 503 (default: %(default)s)",
    )
    args = p.parse_args(argv)
    try:
        settings = json.loads(Path(args.config).read_text()) if args.config else {}
    except (OSError, ValueError) as e:
        sys.exit(f"cannot read --config {args.config}: {e}")
    problems = config_errors(AgentConfig, settings, "config")
    keys = [k.strip() for k in os.environ.get(KEYS_ENV, "").split(",") if k.strip()]
    if not keys:
        problems.append(f"set {KEYS_ENV} to a comma-separated list of API keys clients must send")
    if problems:
        sys.exit("cannot start the service:\n  " + "\n  ".join(problems))
    import uvicorn

    app = create_app(
        RewardAgent(AgentConfig.model_validate(settings)),
        keys,
        args.max_body_bytes,
        args.max_concurrency,
        args.queue_timeout,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
