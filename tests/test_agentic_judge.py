"""The llm judger (judger.type "llm", role "judge") over real HTTP, against tests/fake_openai_server.py."""

import pytest
from test_agentic import FACT_INSTRUCTION, IF_INSTRUCTION, agent_config

from rm_exps.agentic.agent import RewardAgent, Verification
from rm_exps.agentic.client import LLMResponseError
from rm_exps.agentic.config import AgentConfig, agentic_eval_errors, config_errors
from rm_exps.agentic.items import Item
from rm_exps.agentic.judger import parse_verdict
from rm_exps.agentic.signals import Signal
from rm_exps.eval.agentic import PREFIX, AgenticEvaluator

LLM_JUDGE = {"type": "llm"}


def judge_prompts(server) -> list[str]:
    prompts = [r["messages"][-1]["content"] for r in server.chat_requests]
    return [p for p in prompts if p.startswith("You are judging which of two answers")]


def judge(server, tmp_path, candidates, signals, rm_scores=None, **judger):
    agent = RewardAgent(agent_config(server, tmp_path, verifiers=[], judger={**LLM_JUDGE, **judger}))
    return agent.judge(Verification([], signals, [], FACT_INSTRUCTION, candidates), rm_scores)


def test_parse_verdict_wants_exactly_one_tag():
    assert parse_verdict("B is worse. [[A]]") == "A" and parse_verdict("[[ B ]]") == "B"
    assert parse_verdict("[[A]] ... so: [[A]]") == "A"  # repeats of the same tag are one verdict
    for reply in ("[[A]] or [[B]]", "A is better", "[[C]]", "[[a]]", ""):
        with pytest.raises(LLMResponseError, match="exactly one of"):
            parse_verdict(reply)


def test_the_judge_sees_the_signals_and_follows_the_priority(server, tmp_path):
    agent = RewardAgent(agent_config(server, tmp_path, verifiers=["instruction_following"], judger=LLM_JUDGE))
    candidates = ["a b c d e f g the end.", "Too Short"]
    judgement = agent.rank(IF_INSTRUCTION, candidates, rm_scores=[0.0, 5.0])  # the RM prefers the wrong one
    assert judgement.best == 0 and judgement.scores == [1.0, 0.0] and not judgement.tied and judgement.error is None
    assert judgement.used == ["rm", "instruction_following"]
    [prompt] = judge_prompts(server)
    assert IF_INSTRUCTION in prompt and all(c in prompt for c in candidates)
    assert "constraints satisfied: 3 of 3 (" in prompt and "constraints satisfied: 0 of 3 (" in prompt
    assert "LowercaseChecker: all letters lowercase: yes" in prompt
    assert "reward model score (human preference, normalization none): 5.000" in prompt
    assert "[[A]]" in prompt and "[[B]]" in prompt


def test_placement_is_seeded_per_pair_and_maps_back(server, tmp_path):
    signals = [Signal("factuality", [0.2, 1.0])]
    shown = set()
    for seed in range(8):
        j = judge(server, tmp_path, ["Lyon.", "Paris."], signals, [3.0, 0.0], seed=seed)
        assert j.best == 1 and j.scores == [0.0, 1.0]  # factuality beats the RM, wherever Paris is shown
        [match] = j.matches
        assert match["pair"] == [0, 1] and match["winner"] == 1
        shown.add(tuple(match["shown"]))
    assert shown == {(0, 1), (1, 0)}  # both placements occur: position bias is not systematic
    again = judge(server, tmp_path, ["Lyon.", "Paris."], signals, [3.0, 0.0], seed=7)
    assert again.matches[0]["shown"] == j.matches[0]["shown"]  # reproducible


def test_three_candidates_play_a_knockout_and_a_rerun_is_cached(server, tmp_path):
    candidates = ["Lyon.", "Paris.", "Marseille."]
    signals = [Signal("factuality", [0.2, 1.0, 0.2])]
    j = judge(server, tmp_path, candidates, signals, [0.0, 0.0, 5.0])
    assert j.best == 1 and j.scores == [0.0, 2.0, 1.0] and not j.tied
    assert [m["pair"] for m in j.matches] == [[0, 1], [1, 2]]  # 0-1, 2 has a bye, then the final
    assert len(judge_prompts(server)) == 2
    sent = len(server.chat_requests)
    assert judge(server, tmp_path, candidates, signals, [0.0, 0.0, 5.0]) == j
    assert len(server.chat_requests) == sent  # every verdict came from the disk cache


def test_unusable_verdicts_fail_the_item_not_the_evaluation(server, tmp_path):
    for answer in ("NO VERDICT", "TWO VERDICTS"):
        j = judge(server, tmp_path, [answer, "Lyon."], [], [1.0, 0.0])
        assert j.best is None and "exactly one of [[A]] / [[B]]" in j.error and j.scores == [0.0, 0.0]
    agent = RewardAgent(agent_config(server, tmp_path, verifiers=[], judger=LLM_JUDGE))
    evaluator = object.__new__(AgenticEvaluator)  # only the judging step: no model needed
    evaluator.agent, evaluator.seed, evaluator._verifications = agent, 0, None
    evaluator.items = [
        Item("ok", FACT_INSTRUCTION, ["Paris.", "Lyon."], 0),
        Item("bad", FACT_INSTRUCTION, ["Paris. NO VERDICT", "Lyon."], 0),
    ]
    evaluator.placements = [item.placement(0) for item in evaluator.items]
    metrics, rows = evaluator._judge([[1.0, 0.0], [1.0, 0.0]])
    assert metrics[f"{PREFIX} items with judge errors"] == 0.5 and metrics[f"{PREFIX} accuracy"] == 0.5
    assert metrics[f"{PREFIX} items with verifier errors"] == 0.0
    assert rows[0]["best"] == 0 and rows[0]["matches"][0]["winner"] == 0
    assert rows[1]["best"] is None and rows[1]["errors"][0].startswith("judge: expected exactly one")


def test_judge_role_and_type_settings(monkeypatch, tmp_path):
    config = AgentConfig(
        roles={"judge": {"model": "big-judge", "base_url": "http://judge:9/v1", "api_key_env": "JUDGE_KEY"}}
    )
    assert config.endpoint("judge").model == "big-judge" and config.clients()["judge"].role == "judge"
    assert "did you mean 'llm'" in config_errors(AgentConfig, {"judger": {"type": "lm"}}, "config")[0]
    assert "did you mean 'judge'" in config_errors(AgentConfig, {"roles": {"judg": {}}}, "config")[0]
    data = tmp_path / "items.jsonl"
    data.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    monkeypatch.delenv("JUDGE_KEY", raising=False)
    settings = {"data": str(data), "verifiers": [], "roles": config.roles}
    assert agentic_eval_errors(settings) == []  # weighted_sum, no verifiers: no key needed
    assert agentic_eval_errors({**settings, "judger": LLM_JUDGE}) == [
        "agentic: set JUDGE_KEY (the API key of the verifier/judge models)"
    ]
