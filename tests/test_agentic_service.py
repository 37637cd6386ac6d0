"""The verifier service: auth, limits, bad input, and a request scored end to end."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from agentic_llm import AgentLLM
from fake_openai_server import FakeOpenAIServer
from fastapi.testclient import TestClient

from rm_exps.agentic.agent import RewardAgent
from rm_exps.agentic.config import AgentConfig
from rm_exps.agentic.service import create_app

REPO = Path(__file__).resolve().parents[1]
KEY = "s3cret-key"
REQUEST = {
    "instruction": "Describe a lake in at least 5 words, all in lowercase, and end with 'the end.'",
    "candidates": ["a calm blue lake under pines. the end.", "A Lake"],
    "rm_scores": [0.1, 0.9],
}


@pytest.fixture
def api(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeOpenAIServer(respond=AgentLLM()) as llm:
        agent = RewardAgent(AgentConfig(llm={"model": "fake", "base_url": llm.base_url}, cache_dir=None))
        with TestClient(create_app(agent, [KEY], max_body_bytes=4096)) as client:
            yield client


def test_missing_or_wrong_key_is_401(api):
    assert api.post("/v1/score", json=REQUEST).status_code == 401
    assert api.post("/v1/score", json=REQUEST, headers={"X-API-Key": "nope"}).status_code == 401
    assert api.post("/v1/score", json=REQUEST, headers={"Authorization": "Bearer nope"}).status_code == 401


def test_oversized_body_is_413(api):
    big = {**REQUEST, "candidates": ["x" * 5000]}
    assert api.post("/v1/score", json=big, headers={"X-API-Key": KEY}).status_code == 413

    def chunks():  # no Content-Length: the limit holds for streamed bodies too
        yield b'{"instruction": "'
        for _ in range(10):
            yield b"y" * 1000

    r = api.post("/v1/score", content=chunks(), headers={"X-API-Key": KEY, "Content-Type": "application/json"})
    assert r.status_code == 413


def test_malformed_json_and_bad_fields_are_422(api):
    headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
    assert api.post("/v1/score", content=b'{"instruction": ', headers=headers).status_code == 422
    for bad in (
        {**REQUEST, "candidates": []},
        {**REQUEST, "verifiers": ["vibes"]},
        {**REQUEST, "rm_scores": [1.0]},
        {**REQUEST, "extra": 1},
        {"candidates": ["a"]},
    ):
        r = api.post("/v1/score", json=bad, headers=headers)
        assert r.status_code == 422, bad


def test_valid_request_end_to_end(api):
    r = api.post("/v1/score", json=REQUEST, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    body = r.json()
    assert body["routed"] == ["instruction_following"]
    assert body["signals"]["instruction_following"]["scores"] == [1.0, 0.0]
    assert body["combined"]["best"] == 0 and body["combined"]["scores"] == pytest.approx([1.1, 0.9])
    assert api.get("/health").json()["status"] == "ok"
    schema = api.get("/openapi.json").json()
    assert "/v1/score" in schema["paths"] and "ScoreRequest" in schema["components"]["schemas"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_start_command_serves_and_refuses_without_keys(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RM_AGENTIC_API_KEYS"}
    refused = subprocess.run(
        [sys.executable, "-m", "rm_exps.agentic.service"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0 and "RM_AGENTIC_API_KEYS" in refused.stderr
    (tmp_path / "agent.json").write_text('{"llm": {"modle": "x"}}')
    bad = subprocess.run(
        [sys.executable, "-m", "rm_exps.agentic.service", "--config", str(tmp_path / "agent.json")],
        cwd=REPO,
        env={**env, "RM_AGENTIC_API_KEYS": KEY},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "config.llm.modle: unknown key (did you mean 'model'?)" in bad.stderr
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rm_exps.agentic.service", "--port", str(port)],
        cwd=REPO,
        env={**env, "RM_AGENTIC_API_KEYS": KEY},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None, "the service did not start"
                time.sleep(0.2)
        assert health.status_code == 200
        assert httpx.post(f"http://127.0.0.1:{port}/v1/score", json=REQUEST, timeout=5).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_busy_service_answers_503(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeOpenAIServer(respond=AgentLLM()) as llm:
        llm.inject(delay=1.5, match="You decide which checks")  # the first request holds the only slot
        agent = RewardAgent(AgentConfig(llm={"model": "fake", "base_url": llm.base_url}, cache_dir=None))
        with TestClient(create_app(agent, [KEY], max_concurrency=1, queue_timeout=0.2)) as client:
            headers = {"X-API-Key": KEY}
            first = {}
            thread = threading.Thread(
                target=lambda: first.update(r=client.post("/v1/score", json=REQUEST, headers=headers))
            )
            thread.start()
            time.sleep(0.5)
            second = client.post("/v1/score", json=REQUEST, headers=headers)
            thread.join()
    assert second.status_code == 503 and second.headers["retry-after"] == "5"
    assert first["r"].status_code == 200


def test_llm_judger_through_the_service(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeOpenAIServer(respond=AgentLLM()) as llm:
        agent = RewardAgent(
            AgentConfig(llm={"model": "fake", "base_url": llm.base_url}, cache_dir=None, judger={"type": "llm"})
        )
        with TestClient(create_app(agent, [KEY])) as client:
            ok = client.post(
                "/v1/score", json={**REQUEST, "verifiers": ["instruction_following"]}, headers={"X-API-Key": KEY}
            ).json()["combined"]
            bad = client.post(
                "/v1/score",
                json={**REQUEST, "verifiers": [], "candidates": ["NO VERDICT", "b"]},
                headers={"X-API-Key": KEY},
            ).json()["combined"]
    assert ok["best"] == 0 and ok["scores"] == [1.0, 0.0] and ok["error"] is None  # constraints beat the RM
    assert bad["best"] is None and "exactly one of [[A]] / [[B]]" in bad["error"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_rm_scores_are_422(api, value):
    """json.loads reads NaN / Infinity and 1e400 (inf); a NaN would compare false everywhere and be picked as best."""
    body = json.dumps({**REQUEST, "rm_scores": [0.0, 1.0]}).replace("[0.0, 1.0]", f"[{value}, 1.0]").encode()
    r = api.post("/v1/score", content=body, headers={"X-API-Key": KEY, "Content-Type": "application/json"})
    assert r.status_code == 422, (value, r.text)
    assert r.json()["detail"][0]["loc"] == ["body", "rm_scores", 0]
