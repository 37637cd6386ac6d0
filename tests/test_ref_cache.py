"""The on-disk cache of frozen-reference log-probs: equal to fresh ones, missed on any change."""

import copy

import datasets
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from rm_exps.batching import REF_LOGPS, PairCollator, encode_pairs
from rm_exps.config import RunConfig
from rm_exps.models import load_tokenizer
from rm_exps.objectives import build_objective
from rm_exps.ref_cache import ReferenceLogpsCache, example_key, model_fingerprint
from rm_exps.run import precompute_frozen

ROWS = datasets.Dataset.from_dict(
    {
        "prompt": ["2+2?", "Capital of France?", "Say hi"],
        "chosen": ["4", "Paris", "hi"],
        "rejected": ["5", "Lyon", "bye"],
    }
)


def run_precompute(
    tmp_path, cache: bool = True, rows=ROWS, model="tiny-random-llama", template=None, mixed_precision="no"
):
    torch.manual_seed(0)
    config = RunConfig(model=model, objective="im_rm", data_files_dir=str(tmp_path), cache_reference_logps=cache)
    tokenizer = load_tokenizer(config.model)
    if template is not None:
        tokenizer.chat_template = template
    objective = build_objective(config, tokenizer)
    objective.build_model()
    pairs = encode_pairs(rows, tokenizer, objective.input_format)
    AcceleratorState._reset_state(reset_partial_state=False)  # another mixed precision than the last test's
    accelerator = Accelerator(cpu=True, mixed_precision=mixed_precision)
    precompute_frozen(config, objective, [pairs], PairCollator(tokenizer.pad_token_id), accelerator)
    assert objective.frozen_reference() is None  # released either way
    return [ex[REF_LOGPS] for ex in pairs.examples]


def cache_files(tmp_path):
    return sorted((tmp_path / "reference_logps").glob("*.json"))


def test_cached_logps_equal_fresh_ones_and_are_reused(tmp_path, caplog):
    fresh = run_precompute(tmp_path / "nocache", cache=False)
    assert not (tmp_path / "nocache" / "reference_logps").exists()
    first = run_precompute(tmp_path)
    (path,) = cache_files(tmp_path)
    assert first == pytest.approx(fresh, abs=1e-9)
    with caplog.at_level("INFO", logger="rm_exps"):
        second = run_precompute(tmp_path)
    assert second == first and "3 of 3 examples from the cache" in caplog.text
    assert cache_files(tmp_path) == [path]


def test_data_template_and_model_changes_miss_the_cache(tmp_path, caplog):
    run_precompute(tmp_path)
    more = datasets.Dataset.from_dict(
        {"prompt": ["2+2?", "New question"], "chosen": ["4", "a"], "rejected": ["5", "b"]}
    )
    with caplog.at_level("INFO", logger="rm_exps"):
        run_precompute(tmp_path, rows=more)  # one pair seen, one new
        assert "1 of 2 examples from the cache" in caplog.text
        caplog.clear()
        template = (
            "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}"
        )
        run_precompute(tmp_path, template=template)
        assert "0 of 3 examples from the cache" in caplog.text
    run_precompute(tmp_path, model="tiny-random-gpt-neox")  # another model: another file
    assert len(cache_files(tmp_path)) == 2


def test_bf16_autocast_logps_are_not_served_to_an_fp32_run(tmp_path, caplog):
    """The log-probs are computed under the policy's autocast: a bf16-mixed run's must not become an
    fp32 run's reference (its IM-RM would not start at reward 0), nor the other way round."""
    fresh = run_precompute(tmp_path / "nocache", cache=False)
    mixed = run_precompute(tmp_path, mixed_precision="bf16")
    assert mixed != pytest.approx(fresh, abs=1e-6)  # autocast ran
    with caplog.at_level("INFO", logger="rm_exps"):
        fp32 = run_precompute(tmp_path)
        assert "0 of 3 examples from the cache" in caplog.text
        caplog.clear()
        assert run_precompute(tmp_path, mixed_precision="bf16") == mixed
        assert "3 of 3 examples from the cache" in caplog.text
    assert fp32 == pytest.approx(fresh, abs=1e-9)
    assert sorted(p.stem.endswith("-bf16") for p in cache_files(tmp_path)) == [False, True]


def test_fingerprint_sees_weights_dtype_and_new_rows():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2))
    base = model_fingerprint(model)
    assert model_fingerprint(copy.deepcopy(model)) == base
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed[0].weight[-1, -1] += 1  # a resized vocabulary's new rows come last
    assert model_fingerprint(changed) != base
    assert model_fingerprint(copy.deepcopy(model).double()) != base
    key = example_key({"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4]})
    assert key != example_key({"prompt_ids": [1, 2], "chosen_ids": [4], "rejected_ids": [3]})


def test_cache_file_round_trip(tmp_path):
    examples = type(
        "D", (), {"examples": [{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3], REF_LOGPS: (-1.5, -2.5)}]}
    )()
    cache = ReferenceLogpsCache(tmp_path, "abc")
    assert cache.store([examples], write=True) == 1 and cache.store([examples], write=True) == 0
    fresh = type("D", (), {"examples": [{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]}]})()
    assert ReferenceLogpsCache(tmp_path, "abc").attach([fresh]) == 1
    assert fresh.examples[0][REF_LOGPS] == (-1.5, -2.5)
    assert ReferenceLogpsCache(tmp_path, "other").attach([fresh]) == 0
