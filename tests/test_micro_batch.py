"""micro_batch_size: batches split into chunks for forward and backward train exactly as whole batches
(same data order, gradients, optimizer steps and logged losses), pair-weighted or by `loss_weight`."""

import copy

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from pydantic import ValidationError

from rm_exps.batching import OrderCollator, encode_pairs
from rm_exps.config import RunConfig, config_rule_errors
from rm_exps.models import load_tokenizer
from rm_exps.objectives import build_objective
from rm_exps.run_data import MicroBatchCollator, build_train_loader
from rm_exps.train import Trainer

# 10 pairs of different lengths: batches of 4, 4, 2; with accumulation 2, optimizer steps over 8 and 2 pairs
PAIRS = [
    {"prompt": f"Question {i}: " + "pick one " * (i % 3 + 1), "chosen": "good " * (i + 1), "rejected": "bad " * (i % 4)}
    for i in range(10)
]


def train(objective_name: str, micro_batch_size: int | None, **fields):
    """One epoch with batch_size 4 and accumulation 2 (SGD: equal weights after it are equal
    gradients); the trained model, the per-batch records, the trainer and the epoch metrics."""
    AcceleratorState._reset_state()
    GradientState._reset_state()
    config = RunConfig(
        objective=objective_name,
        model="tiny-random-llama",
        batch_size=4,
        micro_batch_size=micro_batch_size,
        gradient_accumulation_steps=2,
        optimizer="sgd",
        lr=0.5,
        train_batch_log_interval=1,
        **fields,
    )
    tokenizer = load_tokenizer(config.model)
    torch.manual_seed(0)
    objective = build_objective(config, tokenizer)
    model = objective.build_model()
    initial = copy.deepcopy(model)
    pairs = encode_pairs(PAIRS, tokenizer, objective.input_format)
    loader, generator = build_train_loader(config, pairs, objective.train_collator(tokenizer.pad_token_id))
    accelerator = Accelerator(gradient_accumulation_steps=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    objective.setup(accelerator.device)
    records = []
    trainer = Trainer(
        config,
        accelerator,
        objective,
        model,
        optimizer,
        loader,
        len(pairs),
        evaluators=[],
        emit=records.append,
        order_generator=generator,
    )
    metrics = trainer.train_epoch(0)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), initial.parameters()))  # it stepped
    return model, records, trainer, metrics


CASES = [
    ("ex_rm", {}),
    ("im_rm", {"share_prompt": True}),
    ("gram_pretrain", {}),  # token-mean loss (loss_weight); the order coins drawn per chunk
    ("gram_pretrain", {"judge_order": "both"}),
]


@pytest.mark.parametrize("micro_batch_size", [1, 3])
@pytest.mark.parametrize("objective_name, fields", CASES)
def test_chunked_batches_train_like_whole_batches(objective_name, fields, micro_batch_size):
    whole, whole_records, whole_trainer, whole_metrics = train(objective_name, None, **fields)
    chunked, records, trainer, metrics = train(objective_name, micro_batch_size, **fields)
    for (name, a), b in zip(chunked.named_parameters(), whole.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert trainer.optimizer_steps == whole_trainer.optimizer_steps == 2
    assert trainer.global_step == whole_trainer.global_step == 3  # loaded batches, not chunks
    assert trainer.train_tokens == whole_trainer.train_tokens
    assert [r["train loss"] for r in records] == pytest.approx([r["train loss"] for r in whole_records], abs=1e-6)
    assert metrics == pytest.approx(whole_metrics, abs=1e-6)


def test_a_resumed_epoch_skips_the_coins_of_the_chunks_it_skips():
    tokenizer = load_tokenizer("tiny-random-llama")
    pairs = list(encode_pairs(PAIRS, tokenizer, "two_answers"))
    whole = OrderCollator(tokenizer.pad_token_id, "random", 0)
    whole.skip([4, 4])
    chunked = MicroBatchCollator(OrderCollator(tokenizer.pad_token_id, "random", 0), 3)
    chunked.skip([4, 4])
    assert torch.cat([c["order"] for c in chunked(pairs[8:])]).tolist() == whole(pairs[8:])["order"].tolist()


def config_problems(**fields) -> str:
    """What the plan refuses in these fields: type errors, else the rules (rm_exps.config.config_rule_errors)."""
    try:
        config = RunConfig(**fields)
    except ValidationError as e:
        return str(e)
    return "\n".join(config_rule_errors(config))


@pytest.mark.parametrize("micro_batch_size", [0, 5])
def test_micro_batch_size_must_be_between_1_and_batch_size(micro_batch_size):
    assert "micro_batch_size" in config_problems(batch_size=4, micro_batch_size=micro_batch_size)
    assert RunConfig(batch_size=4, micro_batch_size=4).micro_batch_size == 4
    assert config_problems(batch_size=4, micro_batch_size=4) == ""


def test_icrm_consistency_term_refuses_chunks():
    assert "icrm with reg_ratio > 0 cannot split batches" in config_problems(
        objective="icrm", batch_size=4, micro_batch_size=2
    )
    assert RunConfig(objective="icrm", reg_ratio=0, batch_size=4, micro_batch_size=2).micro_batch_size == 2
    assert config_problems(objective="icrm", reg_ratio=0, batch_size=4, micro_batch_size=2) == ""


def pair_rows(batch) -> list[tuple[list[int], list[int]]]:
    """(chosen, rejected) tokens of each pair of a [chosen rows; rejected rows] batch, unpadded."""
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    return list(zip(rows[: len(rows) // 2], rows[len(rows) // 2 :]))


def test_the_loader_yields_the_same_pairs_in_the_same_order_in_chunks():
    tokenizer = load_tokenizer("tiny-random-llama")
    pairs = encode_pairs(PAIRS, tokenizer, "chat")
    config = RunConfig(model="tiny-random-llama", share_prompt=False)  # pair_rows reads the [chosen; rejected] rows
    collate = build_objective(config, tokenizer).train_collator(tokenizer.pad_token_id)
    whole, _ = build_train_loader(RunConfig(batch_size=4), pairs, collate)
    chunked, _ = build_train_loader(RunConfig(batch_size=4, micro_batch_size=3), pairs, collate)
    sizes = []
    for batch, chunks in zip(whole, chunked, strict=True):
        assert [pair for chunk in chunks for pair in pair_rows(chunk)] == pair_rows(batch)
        sizes.append([len(pair_rows(chunk)) for chunk in chunks])
    assert sizes == [[3, 1], [3, 1], [2]]
