"""The `agentic` evaluation in plans: a trained RM (any objective) combined with the verifiers."""

import json

import pytest
from agentic_llm import AgentLLM
from fake_openai_server import FakeOpenAIServer

import run_plan
from rm_exps.agentic.items import AgenticDataError, Item, load_items
from rm_exps.agentic.judger import normalize
from rm_exps.eval.agentic import pairwise_accuracy_of
from rm_exps.outputs import read_json
from rm_exps.plan import PlanError, build_runs

ITEMS = [
    {
        "id": "if-a",
        "subset": "if",
        "instruction": "Describe a lake in at least 5 words, all in lowercase.",
        "candidates": ["A Lake.", "a calm blue lake under pines"],
        "label": 1,
    },
    {
        "id": "if-b",
        "subset": "if",
        "instruction": "Write at least 3 words and end with 'done.'",
        "candidates": ["one two three done.", "one done.", "three words only"],
        "label": 0,
    },
    {
        "id": "fact-a",
        "subset": "knowledge",
        "instruction": "What is the capital of France?",
        "candidates": ["Lyon.", "Paris."],
        "label": 1,
    },
    {
        "prompt": "What is the capital of France?",
        "chosen": "It is Paris.",
        "rejected": "Marseille.",
        "id": "fact-b",
        "subset": "knowledge",
    },
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_items_load_from_both_formats_with_clear_errors(tmp_path):
    items = load_items(write_jsonl(tmp_path / "items.jsonl", ITEMS))
    assert [i.label for i in items] == [1, 0, 1, 0] and items[3].candidates == ["It is Paris.", "Marseille."]
    (tmp_path / "list.json").write_text(json.dumps(ITEMS[:2]))
    assert len(load_items(tmp_path / "list.json")) == 2
    for bad, message in (
        ({"instruction": "x", "candidates": ["a", "b"]}, "missing label"),
        ({"instruction": "x", "candidates": ["a"], "label": 0}, "at least two"),
        ({"instruction": "x", "candidates": ["a", "b"], "label": 2}, "index into candidates"),
    ):
        with pytest.raises(AgenticDataError, match=message):
            load_items(write_jsonl(tmp_path / "bad.jsonl", [bad]))


def test_placement_is_seeded_per_item():
    item = Item("q7", "x", ["a", "b", "c", "d", "e"], 0)
    assert item.placement(3) == item.placement(3)
    assert sorted(item.placement(3)) == [0, 1, 2, 3, 4]
    assert len({tuple(Item(f"q{i}", "x", list("abcde"), 0).placement(3)) for i in range(20)}) > 1


def test_pairwise_accuracy_counts_ties_half():
    assert pairwise_accuracy_of([0.5, 0.5, 0.1], 0) == 0.75
    assert pairwise_accuracy_of([0.1, 0.9], 1) == 1.0


def _plan(tmp_path, items_path, **agentic):
    train = write_jsonl(
        tmp_path / "prefs.jsonl",
        [
            {"prompt": f"q{i}", "chosen": "good answer", "rejected": "bad", "split": "train" if i < 4 else "test"}
            for i in range(6)
        ],
    )
    return {
        "configurations": [
            {
                "base_config": {
                    "experiment_name": "agentic_{objective}",
                    "model": "tiny-random-llama",
                    "epochs": 1,
                    "outputs_dir": str(tmp_path / "out"),
                    "dataset_path": str(train),
                    "batch_size": 2,
                    "num_test_samples": 4,
                    "score_metric_name": "eval agentic accuracy",
                    "agentic": {"data": str(items_path), "cache_dir": str(tmp_path / "cache"), **agentic},
                },
                "options": {"objective": ["ex_rm", "im_rm"]},
            }
        ]
    }


def test_plan_run_combines_the_trained_rm_with_the_verifiers(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    items_path = write_jsonl(tmp_path / "items.jsonl", ITEMS)
    with FakeOpenAIServer(respond=AgentLLM()) as llm:
        plan = _plan(
            tmp_path,
            items_path,
            llm={"model": "fake", "base_url": llm.base_url},
            judger={"rm_weight": 0.5, "normalization": "zscore"},
        )
        (tmp_path / "plan.json").write_text(json.dumps(plan))
        assert run_plan.main(["--plan", str(tmp_path / "plan.json")]) == 0
    for objective in ("ex_rm", "im_rm"):
        folder = tmp_path / "out" / f"agentic_{objective}"
        summary = read_json(folder / "summary.json")
        values = {k: v["value"] for k, v in summary["last_tracked_values"].items()}
        assert summary["status"] == "completed" and summary["score"] == values["eval agentic accuracy"]
        for name in (
            "if accuracy",
            "knowledge accuracy",
            "if rm accuracy",
            "accuracy",
            "macro accuracy",
            "rm accuracy",
            "best-of-n accuracy",
            "ties",
            "items with verifier errors",
        ):
            assert f"eval agentic {name}" in values
        rows = [json.loads(line) for line in (folder / "agentic_items.jsonl").read_text().splitlines()]
        assert [r["id"] for r in rows] == ["if-a", "if-b", "fact-a", "fact-b"]
        assert values["eval agentic items with verifier errors"] == 0.0
        for row in rows:  # index-aligned with the data (ids above), whatever the placement
            n = len(row["rm_scores"])
            assert sorted(row["placement"]) == list(range(n))
            expected = [0.5 * z for z in normalize(row["rm_scores"], "zscore")]
            for signal in row["used"][1:]:
                expected = [e + s for e, s in zip(expected, row["signals"][signal])]
            assert row["combined"] == pytest.approx(expected)
        # the verifiers see the real candidates: the correct one wins each signal
        assert rows[0]["signals"]["instruction_following"] == [0.0, 1.0]
        assert rows[1]["signals"]["instruction_following"] == [1.0, 0.5, 0.5]
        assert rows[2]["signals"]["factuality"] == [0.2, 1.0] and rows[3]["signals"]["factuality"] == [1.0, 0.2]
        micro = sum(pairwise_accuracy_of(r["combined"], r["label"]) for r in rows) / 4
        assert values["eval agentic accuracy"] == pytest.approx(micro)


def test_verifier_results_are_reused_across_validations_and_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    items_path = write_jsonl(tmp_path / "items.jsonl", ITEMS[2:])
    with FakeOpenAIServer(respond=AgentLLM()) as llm:
        plan = _plan(tmp_path, items_path, llm={"model": "fake", "base_url": llm.base_url}, verifiers=["factuality"])
        plan["configurations"][0]["base_config"].update(epochs=2)
        (tmp_path / "plan.json").write_text(json.dumps(plan))
        assert run_plan.main(["--plan", str(tmp_path / "plan.json")]) == 0
        # two runs x two validations, but each verifier prompt was sent once (memory, then disk cache)
        prompts = [r["messages"][-1]["content"] for r in llm.chat_requests]
        assert prompts and len(prompts) == len(set(prompts))


def test_plan_errors_name_the_problem_before_any_compute(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    items_path = write_jsonl(tmp_path / "items.jsonl", ITEMS)
    with pytest.raises(PlanError) as e:
        build_runs(_plan(tmp_path, items_path, judger={"rm_weigth": 1.0}))
    assert "agentic.judger.rm_weigth: unknown key (did you mean 'rm_weight'?)" in str(e.value)
    with pytest.raises(PlanError, match="agentic data file not found"):
        build_runs(_plan(tmp_path, tmp_path / "missing.jsonl"))
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(PlanError, match="set OPENAI_API_KEY"):
        build_runs(_plan(tmp_path, items_path))
    assert build_runs(_plan(tmp_path, items_path, verifiers=[]))  # RM only: no key needed


def test_docs_list_every_agent_setting():
    from pathlib import Path

    from rm_exps.agentic.client import Endpoint
    from rm_exps.agentic.config import AgenticEvalConfig, JudgerSettings, SandboxSettings

    doc = (Path(__file__).resolve().parents[1] / "docs" / "AGENTIC.md").read_text()
    for model, prefix in (
        (AgenticEvalConfig, ""),
        (Endpoint, "llm."),
        (SandboxSettings, "sandbox."),
        (JudgerSettings, "judger."),
    ):
        missing = [name for name in model.model_fields if f"| `{prefix}{name}` |" not in doc]
        assert not missing, f"docs/AGENTIC.md does not describe {missing}"


class PairwiseLengthJudge:
    """A scripted pairwise-only objective (as gram_judge): s(chosen) = sigmoid(len_c - len_r), s(rejected) =
    1 - s(chosen), meaningful only inside its pair; P(a beats b) = s(a)."""

    input_format, pairwise_only = "chat", True

    def rewards(self, model, batch):
        import torch

        lengths = batch["response_mask"].sum(1).float()
        half = lengths.shape[0] // 2
        s = torch.sigmoid(lengths[:half] - lengths[half:])
        return s, 1 - s

    def preference_probability(self, r_a, r_b):
        return r_a


def test_a_pairwise_objective_scores_every_candidate_against_every_other():
    """For a pairwise-only objective the RM score of a candidate is its mean win probability against every
    other candidate of the item (the candidates' scores are comparable); two candidates keep the pair's value."""
    import math

    import torch
    from accelerate import Accelerator

    from rm_exps.eval.agentic import AgenticEvaluator
    from rm_exps.models import load_tokenizer

    tokenizer = load_tokenizer("tiny-random-llama")
    lengths = lambda texts: [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    three = ["a", "a b c", "a b c d e f g h"]  # the longest is best, but is the odd one out of (0, 1), (2, 2)
    items = [Item("three", "q", three, 2), Item("two", "q", ["a b", "a"], 0)]
    evaluator = AgenticEvaluator(PairwiseLengthJudge(), tokenizer, agent=None, items=items, seed=0, batch_size=2)
    scores = evaluator.rm_scores(torch.nn.Linear(1, 1), Accelerator(cpu=True))
    sig = lambda z: 1 / (1 + math.exp(-z))
    n3 = lengths(three)
    expected = [sum(sig(n3[i] - n3[j]) for j in range(3) if j != i) / 2 for i in range(3)]
    assert scores[0] == pytest.approx(expected, abs=1e-6)
    assert max(range(3), key=scores[0].__getitem__) == 2
    n2 = lengths(["a b", "a"])
    assert scores[1] == pytest.approx([sig(n2[0] - n2[1]), 1 - sig(n2[0] - n2[1])], abs=1e-6)
