"""Best-of-N selection with a scripted scorer, DPO pairs, the judge win rate, arithmetic data, and
the DPO loss against a hand computation."""

import json

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from rm_exps.batching import PairCollator, encode_example, split_pair
from rm_exps.config import RunConfig
from rm_exps.data.arithmetic import build_arithmetic, extract_answer, is_correct
from rm_exps.data.preference import load_preference_dataset
from rm_exps.eval.best_of_n import BestOfNEvaluator, SampleSet, preference_pairs, select, selection_metrics
from rm_exps.eval.judge import win_rate
from rm_exps.models import load_tokenizer
from rm_exps.objectives import build_objective

MODEL = "tiny-random-llama"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MODEL)


class LengthScorer:
    """A scripted reward model: the reward of a response is its number of response tokens."""

    input_format = "chat"

    def rewards(self, model, batch):
        return split_pair(batch["response_mask"].sum(1).float())


SET = SampleSet(
    prompts=["What is 2+3?", "What is 4*5?"],
    answers=["5", "20"],
    samples=[
        ["The answer is 6.", "So 2 + 3 = 5.\nThe answer is 5.", "5", "It is 5, surely, and nothing else at all"],
        ["The answer is 20.", "20", "Hmm, 4 times 5 is 21.\nThe answer is 21.", "4*5=20"],
    ],
)


def test_select_takes_the_first_best_among_the_first_n():
    scores = [[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 1.0, 5.0]]
    assert select(scores, 1) == [0, 0]
    assert select(scores, 2) == [1, 0]  # tie at 2.0: the first
    assert select(scores, 4) == [1, 3]
    metrics, selections = selection_metrics(SET, scores, [1, 2, 4])
    assert selections[4] == [1, 3]
    # sample 1 of prompt 0 is correct ("... The answer is 5."), sample 3 of prompt 1 ("4*5=20") too
    assert metrics["eval bon best-of-4 accuracy"] == 1.0
    assert metrics["eval bon best-of-1 accuracy"] == 0.5  # 6 is wrong, 20 is right
    assert metrics["eval bon pass@1"] == 0.5 and metrics["eval bon pass@2"] == 1.0


def test_preference_pairs_highest_vs_lowest_with_gap_filter():
    scores = [[1.0, 3.0, 3.0, 0.0], [2.0, 2.1, 1.9, 2.0]]
    pairs = preference_pairs(SET, scores, min_gap=0.5)
    assert len(pairs) == 1  # the second prompt's gap is 0.2
    assert pairs[0]["chosen"] == SET.samples[0][1] and pairs[0]["rejected"] == SET.samples[0][3]
    assert pairs[0]["score_gap"] == pytest.approx(3.0) and pairs[0]["answer"] == "5"
    assert len(preference_pairs(SET, scores, min_gap=0.0)) == 2


def test_win_rate_counts_ties_half():
    assert win_rate([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 4.0, -1.0]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)


def test_evaluator_scores_every_sample_through_the_objective(tokenizer, tmp_path):
    train = SampleSet(prompts=["What is 1+1?"], answers=["2"], samples=[["2", "The answer is 2, I am sure of it."] * 2])
    evaluator = BestOfNEvaluator(
        LengthScorer(),
        tokenizer,
        {"test": SET, "train": train},
        [1, 2, 4],
        tmp_path / "best_of_n",
        batch_size=3,
        pairs_dir=tmp_path / "dpo_pairs",
    )
    metrics = evaluator.evaluate(torch.nn.Linear(1, 1), Accelerator(cpu=True))
    lengths = [
        [len(encode_example(tokenizer, {"prompt": p, "chosen": r, "rejected": r}, "chat")["chosen_ids"]) for r in rs]
        for p, rs in zip(SET.prompts, SET.samples)
    ]
    expected = [max(range(4), key=lambda k: (row[k], -k)) for row in lengths]
    records = [json.loads(line) for line in (tmp_path / "best_of_n" / "test.jsonl").read_text().splitlines()]
    assert [r["scores"] for r in records] == [[float(x) for x in row] for row in lengths]
    assert [r["selected"]["4"] for r in records] == expected
    correct = [is_correct(SET.samples[i][k], SET.answers[i]) for i, k in enumerate(expected)]
    assert metrics["eval bon best-of-4 accuracy"] == sum(correct) / 2
    pairs = load_preference_dataset(str(tmp_path / "dpo_pairs"))
    assert len(pairs["train"]) == 1 and pairs["train"][0]["chosen"] == "The answer is 2, I am sure of it."
    assert len(pairs["test"]) == 2 and metrics["eval bon dpo train pairs"] == 1.0


def test_arithmetic_problems_are_distinct_and_graded():
    train, test = build_arithmetic(40, 10, 20, torch.Generator().manual_seed(0))
    assert len(set(train["prompt"]) | set(test["prompt"])) == 50
    for row in train:
        assert is_correct(row["chosen"], row["answer"]) and not is_correct(row["rejected"], row["answer"])
    assert extract_answer("3 + 4 = 7.\nThe answer is 7.") == "7"
    assert extract_answer("the answer is: 1,200.") == "1200"
    assert extract_answer("I guess 12, or maybe 13") == "13"
    assert extract_answer("no number") is None


def test_dpo_loss_against_a_hand_computation(tokenizer):
    torch.manual_seed(0)
    obj = build_objective(RunConfig(objective="dpo", model=MODEL, kl_coeff=0.1), tokenizer)
    policy = obj.build_model()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pairs = [
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "It is five."},
        {"prompt": "Sky color?", "chosen": "Blue.", "rejected": "Green, mostly"},
    ]
    encoded = [encode_example(tokenizer, p, "chat") for p in pairs]
    batch = PairCollator(tokenizer.pad_token_id)(encoded)

    def logp(lm, e, side):
        ids = e["prompt_ids"] + e[side]
        with torch.no_grad():
            lp = F.log_softmax(lm(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        return sum(lp[t - 1, ids[t]].item() for t in range(len(e["prompt_ids"]), len(ids)))

    losses = []
    for e in encoded:
        margin = (logp(policy.model, e, "chosen_ids") - logp(obj.reference.model, e, "chosen_ids")) - (
            logp(policy.model, e, "rejected_ids") - logp(obj.reference.model, e, "rejected_ids")
        )
        losses.append(-F.logsigmoid(torch.tensor(0.1 * margin)).item())
    loss, _ = obj.loss(policy, batch)
    assert loss.item() == pytest.approx(sum(losses) / 2, abs=1e-5)
    assert abs(sum(losses) / 2 - 0.6931) > 1e-4  # the policy moved away from the reference


def test_a_judge_must_be_a_trained_reward_model(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rm_exps.eval.judge import Judge
    from rm_exps.models import load_model

    lm_dir, rm_dir = tmp_path / "lm", tmp_path / "rm"
    load_model(MODEL, AutoModelForCausalLM, tokenizer).save_pretrained(lm_dir)
    load_model(MODEL, AutoModelForSequenceClassification, tokenizer, num_labels=1).save_pretrained(rm_dir)
    tokenizer.save_pretrained(lm_dir)
    tokenizer.save_pretrained(rm_dir)
    with pytest.raises(ValueError, match="no trained 'score' head"):
        Judge(str(lm_dir))
    with pytest.raises(ValueError, match="no trained score weights"):  # a hub-like name is checked when loaded
        load_model(str(lm_dir), AutoModelForSequenceClassification, tokenizer, num_labels=1, require_trained=("score",))
    scores = Judge(str(rm_dir)).score(["What is 1+1?"] * 2, ["2", "The answer is 3."], Accelerator(cpu=True))
    assert len(scores) == 2 and scores[0] != scores[1]


def test_a_judge_gives_identical_items_the_same_score(tmp_path, tokenizer):
    """The same response in two batches of different padding must tie exactly (win rate 1/2), e.g.
    best-of-1 of two reward models that both select the first sample."""
    from transformers import AutoModelForSequenceClassification

    from rm_exps.eval.judge import Judge
    from rm_exps.models import load_model

    torch.manual_seed(0)
    model = load_model(MODEL, AutoModelForSequenceClassification, tokenizer, num_labels=1)
    torch.nn.init.normal_(model.score.weight)  # a trained-looking head
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    responses = ["2", "The answer is 2, because one and one make two, as everyone knows.", "2"]
    scores = Judge(str(tmp_path / "rm"), batch_size=2).score(["What is 1+1?"] * 3, responses, Accelerator(cpu=True))
    assert scores[0] == scores[2] != scores[1]
    assert win_rate(scores[:1], scores[2:]) == 0.5


class LengthJudge(LengthScorer):
    """A scripted pairwise judge: the longer response wins (transitive), P = sigmoid(len_a - len_b)."""

    name, ranks_pairs = "length_judge", True

    def preference_probability(self, r_a, r_b):
        return torch.sigmoid(r_a - r_b)


@pytest.mark.parametrize("method", ["knockout", "linear_scan"])
def test_a_pairwise_judge_selects_by_tournament(method, tokenizer, tmp_path):
    """bon_selection knockout / linear_scan: the run's model judges pairs (e.g. gram_judge); with a
    transitive judge both pick what the per-sample scores pick."""
    evaluator = BestOfNEvaluator(
        LengthJudge(), tokenizer, {"test": SET}, [1, 2, 4], tmp_path / "bon", batch_size=2, selection=method
    )
    metrics = evaluator.evaluate(torch.nn.Linear(1, 1), Accelerator(cpu=True))
    by_scores = BestOfNEvaluator(LengthScorer(), tokenizer, {"test": SET}, [1, 2, 4], tmp_path / "ref", batch_size=2)
    assert metrics == by_scores.evaluate(torch.nn.Linear(1, 1), Accelerator(cpu=True))
    records = [json.loads(line) for line in (tmp_path / "bon" / "test.jsonl").read_text().splitlines()]
    expected = [json.loads(line)["selected"] for line in (tmp_path / "ref" / "test.jsonl").read_text().splitlines()]
    assert [r["selected"] for r in records] == expected and records[0]["scores"] == []


def test_a_pairwise_judge_needs_a_tournament_selection(tmp_path):
    from rm_exps.plan import PlanError, build_runs

    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    base = {"objective": "gram_judge", "model": MODEL, "dataset_path": str(data), "bon_policy": MODEL}
    with pytest.raises(PlanError, match="set bon_selection to 'knockout' or 'linear_scan'"):
        build_runs({"configurations": [{"base_config": base}]})
    with pytest.raises(PlanError, match="dpo_pairs_num_prompts needs per-sample scores"):
        build_runs(
            {"configurations": [{"base_config": {**base, "bon_selection": "knockout", "dpo_pairs_num_prompts": 4}}]}
        )


@pytest.mark.parametrize("objective", ["im_rm", "dpo"])
def test_a_tournament_judges_an_implicit_rm_after_its_reference_was_released(objective, tokenizer, tmp_path):
    """im_rm / dpo with bon_selection knockout: precompute attaches every sample's reference log-prob
    and releases the reference; the judge's comparisons reuse those log-probs (no live reference), so
    the tournament picks what the per-sample scores pick (Bradley-Terry on rewards is transitive)."""
    torch.manual_seed(0)
    obj = build_objective(RunConfig(objective=objective, model=MODEL), tokenizer)
    model = obj.build_model()
    evaluators = {
        method: BestOfNEvaluator(
            obj, tokenizer, {"test": SET}, [1, 2, 4], tmp_path / method, batch_size=2, selection=method
        )
        for method in ("scores", "knockout", "linear_scan")
    }
    datasets = [loader.dataset for e in evaluators.values() for loader in e.loaders.values()]
    obj.precompute(datasets, PairCollator(tokenizer.pad_token_id), 4, torch.device("cpu"))
    assert obj.reference is None
    with torch.no_grad():  # "training": the policy moves away from its reference
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    metrics = {m: e.evaluate(model, Accelerator(cpu=True)) for m, e in evaluators.items()}
    selected = {
        m: [json.loads(line)["selected"] for line in (tmp_path / m / "test.jsonl").read_text().splitlines()]
        for m in evaluators
    }
    assert selected["knockout"] == selected["scores"] == selected["linear_scan"]
    assert metrics["knockout"] == metrics["scores"]


def test_sampling_overrides_the_models_repetition_penalty():
    """Best-of-N samples at the plan's temperature / top_p with no top-k and no repetition penalty, whatever the
    model's generation_config ships (Qwen2.5-Instruct: repetition_penalty 1.05)."""
    from rm_exps.eval.generation import Decoding

    assert Decoding(temperature=0.7, top_p=0.9).generate_kwargs() == {
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 0,
        "repetition_penalty": 1.0,
    }
