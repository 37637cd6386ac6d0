"""LoRA (peft) and gradient checkpointing for every objective: what trains, what is saved, what reloads."""

import json

import pytest
import torch
from test_runner import write_pairs
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import run_plan
from rm_exps.batching import PairCollator, encode_pairs, model_inputs
from rm_exps.config import RunConfig
from rm_exps.data.preference import load_preference_dataset
from rm_exps.models import load_model, load_tokenizer
from rm_exps.objectives import build_objective
from rm_exps.objectives.adapters import apply_memory_options, trainable_parameter_names
from rm_exps.objectives.modules import unwrap
from rm_exps.outputs import read_json
from rm_exps.plan import PlanError, build_runs

pytest.importorskip("peft")


def build(objective: str, **fields):
    config = RunConfig(model="tiny-random-llama", objective=objective, **fields)
    tokenizer = load_tokenizer(config.model)
    obj = build_objective(config, tokenizer)
    return config, tokenizer, obj, apply_memory_options(obj.build_model(), config)


@pytest.mark.parametrize("objective, head", [("ex_rm", "score"), ("im_rm", None), ("gen_rm", None), ("sft", None)])
def test_lora_trains_only_adapters_and_heads(objective, head):
    _, _, _, module = build(objective, lora_r=4)
    names = trainable_parameter_names(module)
    assert names and all("lora_" in n or (head and f".{head}.modules_to_save." in n) for n in names), names
    assert any("lora_A" in n for n in names)
    if head:
        assert any(f".{head}.modules_to_save." in n for n in names)
    total = sum(p.numel() for p in module.parameters())
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) < 0.5 * total


@pytest.mark.parametrize("objective", ["ex_rm", "im_rm"])
def test_gradient_checkpointing_gives_the_same_gradients(objective, tmp_path):
    """Off, on, and selective (the first of the tiny model's 2 layers recomputes, the other stores)."""
    data = write_pairs(tmp_path / "pairs", n_train=2, n_test=2)
    grads = []
    for fields, recomputing in (
        ({"gradient_checkpointing": False}, [False, False]),
        ({"gradient_checkpointing": True}, [True, True]),
        ({"gradient_checkpointing": True, "gradient_checkpointing_layers": 1}, [True, False]),
    ):
        checkpointing = fields["gradient_checkpointing"]
        torch.manual_seed(0)
        config, tokenizer, obj, module = build(objective, **fields)
        assert [layer.gradient_checkpointing for layer in unwrap(module.model).base_model.layers] == recomputing
        module.train()
        pairs = encode_pairs(load_preference_dataset(data)["train"], tokenizer, obj.input_format)
        obj.precompute([pairs], PairCollator(tokenizer.pad_token_id), 2, torch.device("cpu"))
        batch = PairCollator(tokenizer.pad_token_id)(pairs.examples)
        loss, _ = obj.loss(module, batch)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None})
        assert module.model.is_activation_checkpointing == checkpointing
    for other in grads[1:]:
        assert grads[0].keys() == other.keys()
        for name in grads[0]:
            torch.testing.assert_close(other[name], grads[0][name], rtol=1e-4, atol=1e-6)


def test_gradient_checkpointing_layers_needs_checkpointing():
    plan = {"configurations": [{"base_config": {"model": "tiny-random-llama", "gradient_checkpointing_layers": 4}}]}
    with pytest.raises(PlanError, match="gradient_checkpointing_layers .* needs gradient_checkpointing: true"):
        build_runs(plan)


@pytest.mark.parametrize(
    "objective, auto_class", [("ex_rm", AutoModelForSequenceClassification), ("im_rm", AutoModelForCausalLM)]
)
def test_lora_run_saves_an_adapter_that_reloads(objective, auto_class, tmp_path):
    from peft import PeftModel

    data = write_pairs(tmp_path / "pairs", n_train=4, n_test=2)
    plan = {
        "configurations": [
            {
                "base_config": {
                    "experiment_name": "lora",
                    "model": "tiny-random-llama",
                    "objective": objective,
                    "dataset_path": data,
                    "outputs_dir": str(tmp_path / "out"),
                    "epochs": 1,
                    "batch_size": 2,
                    "lr": 5e-2,
                    "num_test_samples": 2,
                    "lora_r": 4,
                    "save_model": True,
                    "lora_save_merged": True,
                    "random_seed": 3,
                }
            }
        ]
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert run_plan.main(["--plan", str(tmp_path / "plan.json")]) == 0
    run = tmp_path / "out" / "lora"
    assert (run / "model" / "adapter_config.json").is_file() and (run / "model" / "tokenizer_config.json").is_file()
    assert not (run / "model" / "model.safetensors").exists()  # the adapter, not a full copy
    assert (run / "model_merged" / "model.safetensors").is_file()

    config, tokenizer, obj, _ = build(objective)
    extra = {"num_labels": 1} if objective == "ex_rm" else {}
    fresh = load_model(config.model, auto_class, tokenizer, **extra)
    base_weights = {k: v.clone() for k, v in fresh.state_dict().items() if "score" not in k}
    reloaded = PeftModel.from_pretrained(fresh, str(run / "model"))
    lora_b = [p for n, p in reloaded.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained (peft initializes B to zero)
    merged = load_model(str(run / "model_merged"), auto_class, tokenizer, **extra)  # merged = base + adapter
    pairs = encode_pairs(load_preference_dataset(data)["test"], tokenizer, obj.input_format)
    batch = model_inputs(PairCollator(tokenizer.pad_token_id)(pairs.examples))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        a, b = reloaded(**inputs).logits, merged(**inputs).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # the base weights were frozen: the adapter is applied on top of the untouched checkpoint. (peft
    # saves the resized embedding matrices with the adapter, so added tokens keep the run's rows.)
    unchanged = {
        k: v
        for k, v in reloaded.get_base_model().state_dict().items()
        if "lora_" not in k
        and "score" not in k
        and "base_layer" not in k
        and "embed_tokens" not in k
        and "lm_head" not in k
    }
    bad = [k for k in unchanged if k in base_weights and not torch.equal(unchanged[k], base_weights[k])]
    assert unchanged and not bad, bad
    assert read_json(run / "summary.json")["status"] == "completed"
