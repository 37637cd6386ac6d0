"""The reward agent over real HTTP with the real openai client, against tests/fake_openai_server.py."""

import threading
import time

import pytest
from agentic_llm import BUGGY_LOWERCASE
from fake_openai_server import FakeOpenAIServer

from rm_exps.agentic.agent import RewardAgent
from rm_exps.agentic.client import (
    ChatClient,
    Endpoint,
    LLMConfigError,
    LLMRequestError,
    LLMResponseError,
    ResponseCache,
)
from rm_exps.agentic.config import AgentConfig
from rm_exps.agentic.factuality import FactualityVerifier, SearchEvidence, parse_scores, schedule_pairs
from rm_exps.agentic.judger import combine, normalize, select_best
from rm_exps.agentic.router import Router, parse_checks
from rm_exps.agentic.signals import Signal

IF_INSTRUCTION = "Describe a lake in at least 5 words, all in lowercase, and end with 'the end.'"
FACT_INSTRUCTION = "What is the capital of France?"


def agent_config(server, tmp_path, **kw) -> AgentConfig:
    return AgentConfig(
        llm={"model": "fake-agent", "base_url": server.base_url, "retry_base_delay": 0.01},
        cache_dir=str(tmp_path / "cache"),
        **kw,
    )


def client(server, tmp_path=None, **kw) -> ChatClient:
    endpoint = Endpoint(model="fake", base_url=server.base_url, retry_base_delay=0.01, **kw)
    return ChatClient("router", endpoint, ResponseCache(tmp_path / "cache") if tmp_path else None)


HELLO = [{"role": "user", "content": "Answer factually and concisely from your own knowledge: x"}]


# ----------------------------------------------------------------------------- client


def test_replies_are_cached_on_disk_and_a_second_run_makes_no_calls(server, tmp_path):
    agent = RewardAgent(agent_config(server, tmp_path))
    first = agent.verify(IF_INSTRUCTION, ["a b c d e f g the end.", "Too Short"]).to_dict()
    sent = len(server.chat_requests)
    assert sent > 0
    again = RewardAgent(agent_config(server, tmp_path)).verify(IF_INSTRUCTION, ["a b c d e f g the end.", "Too Short"])
    assert len(server.chat_requests) == sent  # every reply came from the cache
    assert again.to_dict() == first


def test_cache_key_covers_model_messages_and_parameters(server, tmp_path):
    c = client(server, tmp_path)
    c.complete(HELLO, max_tokens=10)
    c.complete(HELLO, max_tokens=10)
    c.complete(HELLO, max_tokens=11)
    c.complete(HELLO, max_tokens=10, temperature=0.5)
    assert c.calls == 3 and len(server.chat_requests) == 3


def test_identical_requests_in_flight_are_sent_once(server, tmp_path):
    server.inject(delay=0.3)
    c = client(server, tmp_path)
    replies = []
    threads = [threading.Thread(target=lambda: replies.append(c.complete(HELLO, max_tokens=10))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert replies == ["Paris is the capital of France."] * 4 and c.calls == 1


def test_429_and_500_are_retried_with_retry_after(server):
    server.inject(status=429, headers={"Retry-After": "0"})
    server.inject(status=500)
    c = client(server)
    assert c.complete(HELLO, max_tokens=10) == "Paris is the capital of France."
    assert c.calls == 3


def test_errors_are_typed_never_a_placeholder(server, monkeypatch):
    server.inject(status=503, times=None)
    with pytest.raises(LLMRequestError) as e:
        client(server, max_retries=2).complete(HELLO, max_tokens=10)
    assert e.value.status == 503 and len(server.chat_requests) == 3
    server.clear_injections()
    server.inject(status=401)
    with pytest.raises(LLMRequestError) as e:
        client(server).complete(HELLO, max_tokens=10)
    assert e.value.status == 401 and len(server.chat_requests) == 4  # not retried
    server.inject(content=None)
    with pytest.raises(LLMResponseError, match="not a string"):
        client(server).complete(HELLO, max_tokens=10)
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(LLMConfigError, match="OPENAI_API_KEY"):
        client(server).complete(HELLO, max_tokens=10)


def test_timeouts_are_explicit(server):
    server.inject(delay=1.0)
    started = time.monotonic()
    with pytest.raises(LLMRequestError, match="Timeout"):
        client(server, timeout=0.2, max_retries=0).complete(HELLO, max_tokens=10)
    assert time.monotonic() - started < 1.0


def test_concurrency_is_bounded(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    def slow(messages):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return "ok"

    with FakeOpenAIServer(respond=slow) as s:
        c = client(s, concurrency=2)
        threads = [
            threading.Thread(target=c.complete, args=([{"role": "user", "content": str(i)}], 5)) for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert state["max"] == 2 and c.calls == 8


# ----------------------------------------------------------------------------- router


def test_router_decides_and_force_skips_the_call(server):
    router = Router(client(server))
    assert router.route(IF_INSTRUCTION) == {"instruction_following"}
    assert router.route(FACT_INSTRUCTION) == {"factuality"}
    assert router.route("Tell me a joke.") == set()
    sent = len(server.chat_requests)
    assert Router(client(server), force=["factuality"]).route(IF_INSTRUCTION) == {"factuality"}
    assert len(server.chat_requests) == sent


def test_router_parsing_is_strict():
    assert parse_checks("thinking...\nCHECKS: A, B") == {"instruction_following", "factuality"}
    assert parse_checks("CHECKS: [A]") == {"instruction_following"}
    with pytest.raises(LLMResponseError):
        parse_checks("I think both apply")
    with pytest.raises(LLMResponseError):
        parse_checks("CHECKS: A, C")


# ----------------------------------------------------------------------------- instruction following


def test_constraint_checking_end_to_end(server, tmp_path):
    agent = RewardAgent(agent_config(server, tmp_path))
    candidates = [
        "a calm blue lake under pines. the end.",  # all three hold
        "A calm blue lake under pines. the end.",  # not lowercase
        "tiny lake",  # too short, no ending
        "A Lake",
    ]  # nothing holds
    result = agent.verify(IF_INSTRUCTION, candidates)
    assert result.routed == ["instruction_following"]
    (signal,) = result.signals
    assert signal.scores == [1.0, pytest.approx(2 / 3), pytest.approx(1 / 3), 0.0]
    assert [c["constraint"].split(":")[0] for c in signal.details["checkers"]] == [
        "NumberOfWordsChecker",
        "EndChecker",
        "LowercaseChecker",
    ]
    lowercase = signal.details["checkers"][2]
    assert lowercase["passed"] == [True, False, True, False]
    assert BUGGY_LOWERCASE not in signal.details["code"].values()  # the dry run caught it and it was repaired
    repairs = [r for r in server.chat_requests if r["messages"][-1]["content"].startswith("This checker")]
    assert len(repairs) == 1 and "NameError" in repairs[0]["messages"][-1]["content"]


def test_gate_drops_uncheckable_constraints_and_no_constraint_means_abstain(server, tmp_path):
    agent = RewardAgent(agent_config(server, tmp_path, verifiers=["instruction_following"]))
    signal = agent.verify("Write in a friendly tone at least 2 words.", ["hi there", "hi"]).signals[0]
    assert signal.scores == [1.0, 0.0]
    assert signal.details["dropped"][0]["reason"] == "not checkable by code"
    none = agent.verify("Tell me a joke.", ["a", "b"]).signals[0]
    assert none.scores == [None, None] and not none.errors


def test_malicious_checker_code_is_refused_and_reported(server, tmp_path, llm):
    llm.code_override = "import os\n\ndef check_following(response):\n    return os.system('touch pwned') == 0\n"
    agent = RewardAgent(agent_config(server, tmp_path, verifiers=["instruction_following"], repair_rounds=1))
    signal = agent.verify(IF_INSTRUCTION, ["x", "y"]).signals[0]
    assert signal.scores == [None, None]
    assert all("import of 'os' is not allowed" in d["reason"] for d in signal.details["dropped"])
    assert len(signal.details["dropped"]) == 3
    assert not (tmp_path / "pwned").exists()


def test_a_checker_that_hangs_on_one_candidate_fails_only_that_one(server, tmp_path, llm):
    llm.code_override = "def check_following(response):\n    while response == 'hang':\n        pass\n    return True\n"
    config = agent_config(
        server, tmp_path, verifiers=["instruction_following"], sandbox={"timeout": 1.0, "cpu_seconds": 1}
    )
    signal = RewardAgent(config).verify("Answer in lowercase.", ["ok", "hang"]).signals[0]
    assert signal.scores == [1.0, 0.0]
    assert (
        "timed out" in signal.details["checkers"][0]["errors"][1] or "CPU" in signal.details["checkers"][0]["errors"][1]
    )


# ----------------------------------------------------------------------------- factuality


def test_factuality_scores_every_candidate_listwise(server, tmp_path):
    agent = RewardAgent(agent_config(server, tmp_path))
    candidates = ["It is Paris.", "Lyon, of course.", "Paris!", "Marseille."]
    result = agent.verify(FACT_INSTRUCTION, candidates)
    assert result.routed == ["factuality"]
    signal = result.signals[0]
    # all 6 pairs; Paris vs Paris has no contradiction (1.0 each); Paris vs other: 1.0 / 0.2; other vs other 0.2
    assert signal.scores == pytest.approx([(1.0 + 1.0 + 1.0) / 3, (0.2 + 0.2 + 0.2) / 3, 1.0, 0.2])
    assert len(signal.details["pairs"]) == 6
    queries = [p["queries"] for p in signal.details["pairs"] if p["difference"]]
    assert queries and all(q == ["capital of France"] for q in queries)
    # best of N: the RM prefers Lyon, the verifier outweighs it; the RM separates the two Paris answers
    judgement = agent.rank(FACT_INSTRUCTION, candidates, rm_scores=[0.1, 0.5, 0.2, 0.0])
    assert judgement.best == 2 and judgement.scores == pytest.approx([1.1, 0.7, 1.2, 0.2])


def test_factuality_pair_failures_are_reported_not_zeroed(server, tmp_path):
    server.inject(content="no idea", match="Rate the factual accuracy", times=None)
    verifier = FactualityVerifier(client(server), pairs="round_robin", rounds=1)
    signal = verifier.score(FACT_INSTRUCTION, ["Paris.", "Lyon.", "Paris, yes."])
    # (0,1) and (1,2) fail to parse; (2,0) agree without a verification call
    assert signal.scores == [1.0, None, 1.0]
    assert len(signal.errors) == 2 and "[[score]]" in signal.errors[0]


def test_search_backend_evidence(server):
    class Snippets:
        def __init__(self):
            self.queries = []

        def search(self, query):
            self.queries.append(query)
            return [f"snippet {i} for {query}" for i in range(9)]

    backend = Snippets()
    verifier = FactualityVerifier(client(server), SearchEvidence(backend, per_query=2))
    signal = verifier.score(FACT_INSTRUCTION, ["Paris.", "Lyon."])
    assert signal.scores == [1.0, 0.2]
    assert backend.queries == ["capital of France"]
    assert signal.details["pairs"][0]["evidence"] == [
        "snippet 0 for capital of France",
        "snippet 1 for capital of France",
    ]


def test_pair_schedules_cover_every_candidate():
    assert schedule_pairs(3) == [(0, 1), (0, 2), (1, 2)]
    for n in range(2, 9):
        covered = {i for pair in schedule_pairs(n, "round_robin", 1) for i in pair}
        assert covered == set(range(n))
    assert len(schedule_pairs(8, "round_robin", 2)) == 16


def test_score_parsing():
    assert parse_scores("[[7]] and <<3.5>>") == (0.7, 0.35)
    with pytest.raises(LLMResponseError):
        parse_scores("[[7]] only")
    with pytest.raises(LLMResponseError):
        parse_scores("[[85]] <<3>>")


# ----------------------------------------------------------------------------- judger


def test_judger_arithmetic():
    rm = [0.5, 0.1, -0.4]
    signals = [Signal("instruction_following", [1.0, 0.5, 0.0]), Signal("factuality", [0.2, 1.0, 0.6])]
    j = combine(rm, signals, rm_weight=2.0, weights={"instruction_following": 1.0, "factuality": 0.5})
    assert j.scores == pytest.approx([2 * 0.5 + 1.0 + 0.1, 2 * 0.1 + 0.5 + 0.5, 2 * -0.4 + 0.0 + 0.3])
    assert j.best == 0 and not j.tied and j.used == ["rm", "instruction_following", "factuality"]
    minmax = combine(rm, signals[:1], normalization="minmax")
    assert minmax.scores == pytest.approx([1.0 + 1.0, 0.5 / 0.9 + 0.5, 0.0])
    assert normalize([1.0, 3.0], "zscore") == [-1.0, 1.0] and normalize([2.0, 2.0], "zscore") == [0.0, 0.0]


def test_incomplete_signals_are_dropped_for_the_whole_instruction():
    j = combine([0.1, 0.2], [Signal("factuality", [1.0, None], errors=["pair (0, 1): boom"])])
    assert j.used == ["rm"] and j.scores == [0.1, 0.2] and j.best == 1
    assert "candidates [1] not scored: pair (0, 1): boom" == j.dropped["factuality"]


def test_ties_break_by_rm_then_lowest_index():
    assert select_best([1.0, 1.0, 0.5], tiebreak=[0.1, 0.3, 0.9]) == 1
    assert select_best([1.0, 1.0], tiebreak=[0.2, 0.2]) == 0
    j = combine([0.0, 0.3], [Signal("instruction_following", [1.0, 0.7])])
    assert j.tied and j.best == 1  # 1.0 == 1.0: the RM score decides
