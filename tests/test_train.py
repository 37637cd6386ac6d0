"""The training step: gradient accumulation equals the full-batch gradient; divergence is caught."""

import copy

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch.utils.data import DataLoader

from rm_exps.batching import PairCollator, encode_pairs
from rm_exps.config import RunConfig
from rm_exps.models import load_tokenizer
from rm_exps.objectives import build_objective
from rm_exps.train import Diverged, Trainer, loss_scales, micro_batch_sizes

PAIRS = [{"prompt": f"Question {i}: pick one", "chosen": "good " * (i + 1), "rejected": "bad"} for i in range(5)]


def test_loss_scales_weigh_micro_batches_by_pairs_in_their_window():
    assert micro_batch_sizes(5, 2, 3, 1) == [2, 2, 1]
    assert micro_batch_sizes(5, 2, 2, 2) == [2, 2]  # accelerate completes batches across processes
    # accelerate divides by grad_accum=3; these factors make the window weigh 2/5, 2/5, 1/5
    assert loss_scales([2, 2, 1], 3) == pytest.approx([1.2, 1.2, 0.6])
    # a short last window (one micro-batch of 1 pair) is a full-weight step of its own
    assert loss_scales([2, 2, 1], 2) == pytest.approx([1.0, 1.0, 2.0])


def train_one_epoch(objective_name, batch_size, grad_accum, tokenizer):
    AcceleratorState._reset_state()
    GradientState._reset_state()
    config = RunConfig(
        objective=objective_name,
        model="tiny-random-llama",
        batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        optimizer="sgd",
        lr=0.5,
        train_batch_log_interval=0,
    )
    torch.manual_seed(0)
    objective = build_objective(config, tokenizer)
    model = objective.build_model()
    initial = copy.deepcopy(model)
    accelerator = Accelerator(gradient_accumulation_steps=grad_accum)
    loader = DataLoader(
        encode_pairs(PAIRS, tokenizer, objective.input_format),
        batch_size=batch_size,
        collate_fn=PairCollator(tokenizer.pad_token_id),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    objective.setup(accelerator.device)
    trainer = Trainer(config, accelerator, objective, model, optimizer, loader, len(PAIRS), evaluators=[])
    metrics = trainer.train_epoch(0)
    return objective, initial, model, metrics


@pytest.mark.parametrize("objective_name", ["ex_rm", "im_rm"])
def test_accumulated_step_equals_full_batch_step(objective_name):
    tokenizer = load_tokenizer("tiny-random-llama")
    # 5 pairs, micro-batches of 2, accumulation 3: one optimizer step over micro-batches of 2, 2, 1 pairs
    objective, initial, trained, metrics = train_one_epoch(objective_name, 2, 3, tokenizer)
    full = copy.deepcopy(initial)
    batch = PairCollator(tokenizer.pad_token_id)(list(encode_pairs(PAIRS, tokenizer, objective.input_format)))
    loss, _ = objective.loss(full, batch)
    loss.backward()
    with torch.no_grad():
        for p in full.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad
    moved = 0.0
    for (name, a), b, c in zip(trained.named_parameters(), full.parameters(), initial.parameters()):
        assert torch.allclose(a, b, atol=1e-5), name
        moved += (a - c).abs().sum().item()
    assert moved > 0  # a step happened
    # epoch metrics are pair-weighted means over micro-batches
    assert set(metrics) >= {"train loss", "train accuracy"}


def test_policy_gets_gradients_and_reference_stays_frozen():
    tokenizer = load_tokenizer("tiny-random-llama")
    objective, initial, trained, _ = train_one_epoch("im_rm", 5, 1, tokenizer)
    assert all(not p.requires_grad for p in objective.reference.parameters())
    for a, b in zip(objective.reference.parameters(), initial.parameters()):
        assert torch.equal(a, b)  # the reference is the initial policy, untouched
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), initial.parameters()))


def test_non_finite_loss_raises_diverged():
    tokenizer = load_tokenizer("tiny-random-llama")
    config = RunConfig(objective="ex_rm", model="tiny-random-llama", batch_size=5, train_batch_log_interval=0)
    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator()
    objective = build_objective(config, tokenizer)
    model = objective.build_model()
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    loader = DataLoader(
        encode_pairs(PAIRS, tokenizer, "chat"), batch_size=5, collate_fn=PairCollator(tokenizer.pad_token_id)
    )
    trainer = Trainer(
        config,
        accelerator,
        objective,
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        loader,
        len(PAIRS),
        evaluators=[],
    )
    with pytest.raises(Diverged, match="non-finite training loss at epoch 1, batch 1"):
        trainer.train_epoch(0)


def test_accumulated_gram_pretrain_step_is_the_token_mean_of_its_window():
    """gram_pretrain averages over target tokens (GRAM divides the window's summed NLL by all its
    target tokens): micro-batches of 2, 2, 1 pairs with different token counts in one window of 3
    give the step of one batch of all 5 pairs."""
    from rm_exps.batching import OrderCollator

    AcceleratorState._reset_state()
    GradientState._reset_state()
    tokenizer = load_tokenizer("tiny-random-llama")
    config = RunConfig(
        objective="gram_pretrain",
        model="tiny-random-llama",
        batch_size=2,
        judge_order="both",
        gradient_accumulation_steps=3,
        optimizer="sgd",
        lr=0.5,
        train_batch_log_interval=0,
    )
    torch.manual_seed(0)
    objective = build_objective(config, tokenizer)
    model = objective.build_model()
    initial = copy.deepcopy(model)
    collate = OrderCollator(tokenizer.pad_token_id, "both", 0)
    pairs = encode_pairs(PAIRS, tokenizer, objective.input_format)
    accelerator = Accelerator(gradient_accumulation_steps=3)
    loader = DataLoader(pairs, batch_size=2, collate_fn=collate)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    trainer = Trainer(config, accelerator, objective, model, optimizer, loader, len(PAIRS), evaluators=[])
    trainer.train_epoch(0)
    sizes = [int(objective.loss_weight(b)) for b in DataLoader(pairs, batch_size=2, collate_fn=collate)]
    assert len(set(sizes)) > 1  # the micro-batches really differ in tokens

    full = copy.deepcopy(initial)
    loss, _ = objective.loss(full, collate(list(pairs)))
    loss.backward()
    with torch.no_grad():
        for p in full.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad
    for (name, a), b in zip(model.named_parameters(), full.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
