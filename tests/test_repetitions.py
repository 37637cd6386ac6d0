"""What a repetition changes at run time: another training seed gives another head initialization and
another shuffle order; the same seed gives the same ones (so a repetition is a real second sample)."""

import torch
from accelerate.utils import set_seed

from rm_exps.batching import encode_pairs
from rm_exps.config import RunConfig
from rm_exps.models import load_tokenizer
from rm_exps.objectives import build_objective
from rm_exps.plan import repetition_config
from rm_exps.run_data import build_train_loader

PAIRS = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": f"No {i}."} for i in range(12)]


def head_and_order(config: RunConfig) -> tuple[torch.Tensor, list[list[int]]]:
    """The objective's fresh value head and the train loader's first epoch, as a run builds them."""
    tokenizer = load_tokenizer(config.model)
    set_seed(config.random_seed)  # as run.train_and_evaluate does before building the objective's model
    objective = build_objective(config, tokenizer)
    head = objective.build_model().head.weight.detach().clone()
    pairs = encode_pairs(PAIRS, tokenizer, "chat")
    loader, _ = build_train_loader(config, pairs, lambda examples: [e["prompt_ids"] for e in examples])
    return head, [batch for batch in loader]


def test_repetitions_differ_in_head_init_and_shuffle_order_and_repeat_exactly():
    base = RunConfig(model="tiny-random-llama", objective="ex_rm", batch_size=4, experiment_name="r")
    first, second = (repetition_config(base, rep, ["seed"]) for rep in (1, 2))
    assert first.random_seed != second.random_seed
    head1, order1 = head_and_order(first)
    head2, order2 = head_and_order(second)
    again, order_again = head_and_order(repetition_config(base, 1, ["seed"]))
    assert not torch.equal(head1, head2) and order1 != order2
    assert torch.equal(head1, again) and order1 == order_again
