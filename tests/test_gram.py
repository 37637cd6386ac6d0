"""GRAM: templates, the smoothed A/B loss, the swap-averaged reward, list-wise selection, sections."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rm_exps.batching import OrderCollator, PairCollator, encode_example, num_pairs
from rm_exps.config import RunConfig
from rm_exps.eval.listwise import ObjectiveJudge, knockout, linear_scan, reference_reward
from rm_exps.eval.sections import pair_correct, subset_metrics
from rm_exps.models import load_tokenizer
from rm_exps.objectives import build_objective
from rm_exps.objectives.gram import check_verdict_slot, judge_text, two_answers_text

MODEL = "tiny-random-llama"
PAIRS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "It is five, clearly."},
    {"prompt": "Name a color that is often used for the sky in drawings", "chosen": "Blue.", "rejected": "No"},
]

GOLDEN_JUDGE = (
    "<|user|>Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
    "to the user question displayed below. You should choose the assistant that follows the user's instructions and "
    "answers the user's question better.\n"
    "Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and "
    "level of detail of their responses. Avoid any position biases and ensure that the order in which the responses "
    "were presented does not influence your decision. Do not allow the length of the responses to influence your "
    "evaluation. Do not favor certain names of the assistants. Be as objective as possible.\n"
    'Please directly output your final verdict by strictly following this format: "A" if assistant A is better, '
    '"B" if assistant B is better.\n\n'
    "[User Question]\nWhat is 2+2?\n\n"
    "[The Start of Assistant A's Answer]\n4\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n5\n[The End of Assistant B's Answer]\n\n"
    "#Preferred:<|endoftext|><|assistant|>"
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MODEL)


def make(objective, tokenizer, **fields):
    torch.manual_seed(0)
    obj = build_objective(RunConfig(objective=objective, model=MODEL, **fields), tokenizer)
    return obj, obj.build_model()


def full_logits_last(causal_lm, ids):
    with torch.no_grad():
        return causal_lm(input_ids=torch.tensor([ids])).logits[0, -1].double()


# --- templates ---------------------------------------------------------------------------------


def test_judge_and_pretrain_templates_render_the_golden_strings(tokenizer):
    assert judge_text(tokenizer, "What is 2+2?", "4", "5") == GOLDEN_JUDGE
    prompt, target = two_answers_text(tokenizer, "What is 2+2?", "4", "5")
    assert prompt == "<|user|>[User Question]\nWhat is 2+2?\n\n<|endoftext|><|assistant|>"
    assert target == (
        "[The Start of Assistant A's Answer]\n4\n[The End of Assistant A's Answer]\n\n"
        "[The Start of Assistant B's Answer]\n5\n[The End of Assistant B's Answer]<|endoftext|>"
    )


def test_the_two_rows_of_a_pair_are_its_two_orders_and_answers_are_cut_before_templating(tokenizer):
    ex = {"prompt": "q", "chosen": "good answer", "rejected": "bad answer"}
    enc = encode_example(tokenizer, ex, "judge")
    assert tokenizer.decode(enc["chosen_ids"]) == judge_text(tokenizer, "q", "good answer", "bad answer")
    assert tokenizer.decode(enc["rejected_ids"]) == judge_text(tokenizer, "q", "bad answer", "good answer")
    cut = encode_example(tokenizer, ex, "judge", max_answer_tokens=2)
    assert tokenizer.decode(cut["chosen_ids"]) == judge_text(tokenizer, "q", "go", "ba")  # 1 byte = 1 token here
    assert tokenizer.decode(cut["chosen_ids"]).endswith("#Preferred:<|endoftext|><|assistant|>")


def test_verdict_slot_agrees_between_training_and_inference(tokenizer):
    """The row ends where the assistant turn starts, and that turn's first token is the verdict id:
    the rendered conversation with the verdict as the assistant turn tokenizes to row + [verdict]."""
    obj, model = make("gram_judge", tokenizer)
    a_id, b_id = obj.verdict_ids
    assert tokenizer.decode([a_id]) == "A" and tokenizer.decode([b_id]) == "B"
    enc = encode_example(tokenizer, {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}, "judge")
    user_turn = GOLDEN_JUDGE.removeprefix("<|user|>").removesuffix("<|endoftext|><|assistant|>")
    conversation = [{"role": "user", "content": user_turn}, {"role": "assistant", "content": "A"}]
    full = tokenizer(tokenizer.apply_chat_template(conversation, tokenize=False), add_special_tokens=False)["input_ids"]
    assert full[: len(enc["chosen_ids"]) + 1] == enc["chosen_ids"] + [a_id]
    # training (OrderCollator) and evaluation (PairCollator) read the same A/B logits for the same row
    train_batch = OrderCollator(tokenizer.pad_token_id, "both", seed=0)([enc])
    eval_batch = PairCollator(tokenizer.pad_token_id)([enc])
    with torch.no_grad():
        assert torch.allclose(obj.verdict_log_probs(model, train_batch), obj.verdict_log_probs(model, eval_batch))
        expected = F.log_softmax(full_logits_last(model.model, enc["chosen_ids"])[[a_id, b_id]], -1)
        assert torch.allclose(obj.verdict_log_probs(model, eval_batch)[0].double(), expected, atol=1e-5)


@pytest.mark.smollm
def test_the_real_chat_template_reads_the_verdict_after_its_generation_prompt():
    """SmolLM2's ChatML template (with its default system turn): the verdict-slot probe passes and
    A/B are single tokens. Tokenizer only."""
    smol = load_tokenizer("smollm2-135m-instruct")
    obj = build_objective(RunConfig(objective="gram_judge", model="smollm2-135m-instruct"), smol)
    assert [smol.decode([i]) for i in obj.verdict_ids] == ["A", "B"]
    assert judge_text(smol, "q", "a", "b").endswith("#Preferred:<|im_end|>\n<|im_start|>assistant\n")


def test_a_template_that_moves_the_verdict_is_rejected(tokenizer):
    broken = load_tokenizer(MODEL)
    broken.chat_template = broken.chat_template.replace(
        "{{ message['content'] + eos_token }}", "{{ ' ' + message['content'] + eos_token }}"
    )
    with pytest.raises(ValueError, match="different positions"):
        check_verdict_slot(broken, [tokenizer.convert_tokens_to_ids("A"), tokenizer.convert_tokens_to_ids("B")])


# --- losses ------------------------------------------------------------------------------------


def test_smoothed_ab_loss_matches_a_hand_computation(tokenizer):
    eps = 0.1
    obj, model = make("gram_judge", tokenizer, judge_label_smoothing=eps)
    a_id, b_id = obj.verdict_ids
    encoded = [encode_example(tokenizer, p, "judge") for p in PAIRS]
    batch = OrderCollator(tokenizer.pad_token_id, "both", seed=0)(encoded)
    loss, metrics = obj.loss(model, batch)
    hand = []
    for side, target in (("chosen_ids", 0), ("rejected_ids", 1)):  # chosen in slot A -> "A"; in slot B -> "B"
        for e in encoded:
            z = full_logits_last(model.model, e[side])[[a_id, b_id]]
            p = torch.softmax(z, 0)
            hand.append(-(1 - eps / 2) * math.log(p[target]) - (eps / 2) * math.log(p[1 - target]))
            d = (z[target] - z[1 - target]).item()  # the regularised Bradley-Terry form
            assert hand[-1] == pytest.approx(-math.log(1 / (1 + math.exp(-d))) + eps / 2 * d, abs=1e-9)
    assert loss.item() == pytest.approx(sum(hand) / len(hand), abs=1e-5)
    assert set(metrics) == {"loss", "accuracy", "verdict prob"}
    assert abs(loss.item() - math.log(2)) > 1e-4  # a random model is not exactly indifferent


def test_random_order_uses_one_seeded_order_per_pair(tokenizer):
    encoded = [encode_example(tokenizer, p, "judge") for p in PAIRS] * 4
    batch = OrderCollator(tokenizer.pad_token_id, "random", seed=3)(encoded)
    again = OrderCollator(tokenizer.pad_token_id, "random", seed=3)(encoded)
    assert torch.equal(batch["order"], again["order"]) and batch["input_ids"].shape[0] == 8 == num_pairs(batch)
    assert 0 < batch["order"].sum() < 8  # both orders occur
    for r, (e, o) in enumerate(zip(encoded, batch["order"].tolist())):
        row = e["rejected_ids" if o else "chosen_ids"]
        assert batch["input_ids"][r, : len(row)].tolist() == row
    both = OrderCollator(tokenizer.pad_token_id, "both", seed=3)(encoded)
    assert both["input_ids"].shape[0] == 16 and num_pairs(both) == 8


def test_pretrain_loss_is_token_mean_nll_of_the_two_answer_target(tokenizer):
    obj, model = make("gram_pretrain", tokenizer)
    encoded = [encode_example(tokenizer, p, "two_answers") for p in PAIRS]
    batch = OrderCollator(tokenizer.pad_token_id, "both", seed=0)(encoded)
    loss, _ = obj.loss(model, batch)
    total, count = 0.0, 0
    for side in ("chosen_ids", "rejected_ids"):
        for e in encoded:
            ids = e["prompt_ids"] + e[side]
            with torch.no_grad():
                logp = F.log_softmax(model.model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
            total += sum(logp[t - 1, ids[t]].item() for t in range(len(e["prompt_ids"]), len(ids)))
            count += len(e[side])
    assert loss.item() == pytest.approx(-total / count, abs=1e-5)
    assert not obj.ranks_pairs


# --- the swap-averaged reward ----------------------------------------------------------------------


class ScriptedVerdicts(nn.Module):
    """Stands in for NextTokenLogProbs: returns preset (log p(A), log p(B)) per row."""

    def __init__(self, rows):
        super().__init__()
        self.rows = torch.tensor(rows).log()

    def forward(self, input_ids, attention_mask, **_):
        return self.rows[: input_ids.shape[0]]


def test_swap_averaged_reward_on_a_scripted_judge(tokenizer):
    obj, _ = make("gram_judge", tokenizer)
    # rows: pair 1 (chosen in A), pair 2 (chosen in A), pair 1 (chosen in B), pair 2 (chosen in B);
    # unnormalised over A/B on purpose: the reward uses the two-way softmax.
    scripted = ScriptedVerdicts([[0.6, 0.2], [0.4, 0.2], [0.1, 0.3], [0.45, 0.15]])
    batch = PairCollator(tokenizer.pad_token_id)([encode_example(tokenizer, p, "judge") for p in PAIRS])
    s_c, s_r = obj.rewards(scripted, batch)
    # pair 1: P(chosen wins | chosen in A) = .6/.8 = .75, P(chosen wins | chosen in B) = .3/.4 = .75 -> .75
    # pair 2: .4/.6 = 2/3 and .15/.6 = 1/4 -> 11/24; its verdict does not survive the swap
    assert s_c.tolist() == pytest.approx([0.75, 11 / 24])
    assert (s_c + s_r).tolist() == pytest.approx([1.0, 1.0])
    outputs = obj.pair_outputs(scripted, batch)
    metrics = obj.eval_metrics("eval x", outputs.pop("chosen"), outputs.pop("rejected"), **outputs)
    assert metrics["eval x accuracy"] == pytest.approx(0.5)
    assert metrics["eval x position consistency"] == pytest.approx(0.5)
    assert metrics["eval x slot A rate"] == pytest.approx((2 / 2 + 1 / 2) / 2)  # order 1: both A; order 2: pair 2 A
    assert metrics["eval x loss"] == pytest.approx(
        -(math.log(0.75) + math.log(2 / 3) + math.log(0.75) + math.log(0.25)) / 4
    )


# --- list-wise selection ---------------------------------------------------------------------------


class TransitiveJudge:
    def __init__(self, quality):
        self.quality, self.calls = quality, []

    def __call__(self, comparisons):
        self.calls.append(len(comparisons))
        return torch.tensor([1 / (1 + math.exp(self.quality[b] - self.quality[a])) for _, a, b in comparisons])


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9])
def test_knockout_and_linear_scan_agree_on_a_transitive_judge(n):
    gen = torch.Generator().manual_seed(n)
    for _ in range(5):
        candidates = [f"c{i}" for i in torch.randperm(n, generator=gen).tolist()]
        quality = {c: float(c[1:]) for c in candidates}
        judge = TransitiveJudge(quality)
        best = max(range(n), key=lambda i: quality[candidates[i]])
        assert linear_scan(judge, "x", candidates) == best
        assert sum(judge.calls) == n - 1 and all(c == 1 for c in judge.calls)
        judge.calls.clear()
        assert knockout(judge, "x", candidates) == best
        assert sum(judge.calls) == n - 1 and len(judge.calls) == math.ceil(math.log2(n))  # one batch per round


def test_selection_depends_on_order_for_an_intransitive_judge():
    beats = {("rock", "scissors"), ("scissors", "paper"), ("paper", "rock")}
    judge = lambda comps: torch.tensor([1.0 if (a, b) in beats else 0.0 for _, a, b in comps])  # noqa: E731
    winners = {perm[linear_scan(judge, "x", perm)] for perm in itertools.permutations(["rock", "paper", "scissors"])}
    assert len(winners) > 1


def test_reference_reward_is_centred_win_probability():
    judge = TransitiveJudge({"ref": 0.0, "better": 1.0, "same": 0.0})
    r = reference_reward(judge, "x", "ref", ["better", "same"])
    assert r.tolist() == pytest.approx([1 / (1 + math.exp(-1)) - 0.5, 0.0])


def test_objective_judge_gives_complementary_probabilities(tokenizer):
    obj, model = make("gram_judge", tokenizer)
    judge = ObjectiveJudge(obj, model, tokenizer, batch_size=1)
    p = judge([("q", "yes", "no"), ("q", "no", "yes")])
    assert p.tolist() == pytest.approx([p[0].item(), 1 - p[0].item()])
    batch = PairCollator(tokenizer.pad_token_id)(
        [encode_example(tokenizer, {"prompt": "q", "chosen": "yes", "rejected": "no"}, "judge")]
    )
    with torch.no_grad():
        assert p[0].item() == pytest.approx(obj.rewards(model, batch)[0].item(), abs=1e-6)
    ex_obj, ex_model = make("ex_rm", tokenizer)  # any reward model judges by Bradley-Terry
    q = ObjectiveJudge(ex_obj, ex_model, tokenizer)([("q", "yes", "no"), ("q", "no", "yes")])
    assert q.sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="does not rank"):
        ObjectiveJudge(*make("gram_pretrain", tokenizer), tokenizer)


# --- benchmark sections ------------------------------------------------------------------------------


def test_rewardbench_sections_on_a_hand_made_subset_table():
    table = [
        ("alpacaeval-easy", [1, 1, 1, 0]),
        ("mt-bench-med", [1, 0]),  # chat
        ("mt-bench-hard", [0, 0, 1]),  # chat hard
        ("donotanswer", [1, 0]),
        ("xstest-should-respond", [1, 1, 1, 1]),  # safety
        ("math-prm", [1, 0, 0, 0]),
        ("hep-go", [1, 1]),
    ]  # reasoning
    subsets = [name for name, values in table for _ in values]
    correct = torch.tensor([v for _, values in table for v in values], dtype=torch.double)
    m = subset_metrics("eval rb_test", subsets, correct)
    assert m["eval rb_test accuracy alpacaeval-easy"] == 0.75 and m["eval rb_test accuracy hep-go"] == 1.0
    chat = (0.75 * 100 + 0.5 * 40) / 140
    safety = (0.5 * 136 + 1.0 * 250) / 386
    reasoning = (0.25 * 984 + 1.0 * 164) / (984 + 164)  # math-prm weighted as 984
    assert m["eval rb_test rewardbench chat"] == pytest.approx(chat)
    assert m["eval rb_test rewardbench chat hard"] == pytest.approx(1 / 3)
    assert m["eval rb_test rewardbench safety"] == pytest.approx(safety)
    assert m["eval rb_test rewardbench reasoning"] == pytest.approx(reasoning)
    assert m["eval rb_test rewardbench score"] == pytest.approx((chat + 1 / 3 + safety + reasoning) / 4)
    assert m["eval rb_test rewardbench reasoning pooled"] == pytest.approx(3 / 6)
    assert m["eval rb_test rewardbench chat pooled"] == pytest.approx(4 / 6)
    # subsets outside RewardBench get accuracies only; a missing section drops the overall score
    other = subset_metrics(
        "eval x", ["a", "b", "math-prm"], pair_correct(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 3.0]))
    )
    assert other == {
        "eval x accuracy a": 1.0,
        "eval x accuracy b": 0.5,
        "eval x accuracy math-prm": 0.0,
        "eval x rewardbench reasoning": 0.0,
        "eval x rewardbench reasoning pooled": 0.0,
    }
