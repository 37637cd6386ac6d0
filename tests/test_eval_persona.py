"""The Persona token-shift evaluator: pair construction, metric names and values (scripted rewards)."""

import pytest
import torch
from accelerate import Accelerator

from rm_exps.batching import split_pair
from rm_exps.eval.persona import PersonaShiftEvaluator, shifted_response
from rm_exps.models import load_tokenizer

SPLITS = {
    "train": [
        {"prompt": f"Statement {i}?", "chosen": "A truthful reply is yes", "rejected": "My judgement: no"}
        for i in range(3)
    ],
    "test": [{"prompt": "Statement 9?", "chosen": "A truthful reply is sure", "rejected": "My judgement: never"}],
}
SCRIPT = {"certainly": 1.0, "absolutely": 1.0, "not really": 0.0, "nope": 2.0}


class ScriptedObjective:
    """Reward of a response = the score of the eval token it ends with (decoded from the batch)."""

    input_format = "chat"

    def __init__(self, tokenizer):
        self.tokenizer, self.seen = tokenizer, []

    def rewards(self, model, batch):
        texts = [
            self.tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])
        ]
        self.seen += texts
        scores = torch.tensor(
            [next(v for k, v in SCRIPT.items() if t.removesuffix(self.tokenizer.eos_token).endswith(k)) for t in texts]
        )
        return split_pair(scores)


def test_metric_names_values_and_pairs():
    tokenizer = load_tokenizer("tiny-random-llama")
    objective = ScriptedObjective(tokenizer)
    evaluator = PersonaShiftEvaluator(
        objective,
        tokenizer,
        SPLITS,
        ["certainly", "absolutely"],
        ["not really", "nope"],
        ["My response would be "],
        ["I lean toward "],
        seed=875,
        batch_size=2,
    )
    metrics = evaluator.evaluate(torch.nn.Linear(1, 1), Accelerator(cpu=True))
    assert set(metrics) == {f"eval {s} {t} reward" for s in ("train", "test") for t in SCRIPT} | {
        "eval train paraphrased responses accuracy",
        "eval test paraphrased responses accuracy",
    }
    assert metrics["eval test nope reward"] == 2.0 and metrics["eval train certainly reward"] == 1.0
    # (certainly|absolutely) beat "not really" and lose to "nope": 2 of 4 combinations won
    assert metrics["eval train paraphrased responses accuracy"] == pytest.approx(0.5)
    assert any("My response would be certainly" in t for t in objective.seen)
    assert any("I lean toward not really" in t for t in objective.seen)
    # every (split, token) response set is scored exactly once: 2 loaders per split, 4 examples in all
    assert len(objective.seen) == 2 * 2 * (3 + 1)


def test_without_unseen_prefixes_the_last_word_is_replaced():
    assert shifted_response("A truthful reply is yes", None, "certainly") == "A truthful reply is certainly"
    assert shifted_response("yes", None, "nope") == "nope"
    assert shifted_response("ignored", "I lean toward ", "nope") == "I lean toward nope"


def test_a_token_on_both_sides_is_rejected():
    tokenizer = load_tokenizer("tiny-random-llama")
    with pytest.raises(ValueError, match="both the yes and the no side"):
        PersonaShiftEvaluator(ScriptedObjective(tokenizer), tokenizer, SPLITS, ["nope"], ["nope"], [], [], 0, 2)
