"""Hub loaders on local fixtures written in each hub dataset's own schema (no network)."""

import datasets
import pytest
import torch

from rm_exps.data import DatasetError
from rm_exps.data.hub import (
    REWARDBENCH_CODE_NUM_TEST,
    REWARDBENCH_MATH_NUM_TEST,
    REWARDMATH_NUM_TEST,
    load_reward_bench,
    load_rewardbench_code,
    load_rewardbench_math,
    load_rewardmath,
    load_ultrafeedback,
)


def gen(seed=982):
    return torch.Generator().manual_seed(seed)


def messages(prompt, answer):
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def ultrafeedback_rows(split, n):
    # every third row is a tie and every fifth has the scores reversed: both are dropped
    return [
        {
            "prompt": f"{split} q{i}",
            "prompt_id": str(i),
            "chosen": messages(f"{split} q{i}", f"good {i}"),
            "rejected": messages(f"{split} q{i}", f"bad {i}"),
            "score_chosen": 8.0 if i % 3 else 5.0,
            "score_rejected": 9.0 if i % 5 == 0 else 5.0,
        }
        for i in range(n)
    ]


def kept(n):
    return [i for i in range(n) if i % 3 and i % 5]


@pytest.fixture
def ultrafeedback_dir(tmp_path):
    for split in ("train_prefs", "test_prefs", "train_sft"):
        datasets.Dataset.from_list(ultrafeedback_rows(split, 20)).to_json(tmp_path / f"{split}.jsonl")
    return tmp_path


def test_ultrafeedback_filters_ties_and_takes_assistant_turn(ultrafeedback_dir):
    train, test = load_ultrafeedback(str(ultrafeedback_dir), gen())
    assert train.column_names == ["prompt", "chosen", "rejected"]
    assert train["prompt"] == [f"train_prefs q{i}" for i in kept(20)]
    assert train["chosen"] == [f"good {i}" for i in kept(20)]
    assert test["rejected"] == [f"bad {i}" for i in kept(20)]


def test_ultrafeedback_from_saved_dataset_dict(tmp_path):
    dd = datasets.DatasetDict(
        {s: datasets.Dataset.from_list(ultrafeedback_rows(s, 10)) for s in ("train_prefs", "test_prefs")}
    )
    dd.save_to_disk(str(tmp_path / "uf"))
    train, test = load_ultrafeedback(str(tmp_path / "uf"), gen())
    assert (len(train), len(test)) == (len(kept(10)), len(kept(10)))


def test_ultrafeedback_needs_both_splits(tmp_path):
    datasets.Dataset.from_list(ultrafeedback_rows("train_prefs", 5)).to_json(tmp_path / "one.jsonl")
    with pytest.raises(DatasetError, match="test_prefs"):
        load_ultrafeedback(str(tmp_path / "one.jsonl"), gen())


def reward_bench_rows():
    subsets = ["math-prm"] * 450 + ["hep-python", "hep-cpp", "hep-go"] * 320 + ["alpacaeval-easy"] * 30
    return [
        {
            "prompt": f"{s} p{i}",
            "chosen": f"c{i}",
            "rejected": f"r{i}",
            "chosen_model": "m",
            "rejected_model": "m",
            "subset": s,
            "id": i,
        }
        for i, s in enumerate(subsets)
    ]


@pytest.fixture
def reward_bench_file(tmp_path):
    path = tmp_path / "filtered-00000-of-00001.parquet"
    datasets.Dataset.from_list(reward_bench_rows()).to_parquet(str(path))
    return str(path)


def test_rewardbench_math_holds_out_400_by_randperm(reward_bench_file):
    train, test = load_rewardbench_math(reward_bench_file, gen())
    assert (len(train), len(test)) == (50, REWARDBENCH_MATH_NUM_TEST)
    assert train.column_names == ["prompt", "chosen", "rejected"]
    perm = torch.randperm(450, generator=gen()).tolist()
    math_prompts = [f"math-prm p{i}" for i in range(450)]
    assert train["prompt"] == [math_prompts[i] for i in perm[:50]]
    assert test["prompt"] == [math_prompts[i] for i in perm[50:]]


def test_rewardbench_code_keeps_hep_subsets_and_holds_out_900(reward_bench_file):
    train, test = load_rewardbench_code(reward_bench_file, gen())
    assert (len(train), len(test)) == (960 - REWARDBENCH_CODE_NUM_TEST, 900)
    assert all(p.startswith("hep-") for p in [*train["prompt"], *test["prompt"]])
    assert not set(train["prompt"]) & set(test["prompt"])


def test_reward_bench_too_small_is_an_error(tmp_path):
    path = tmp_path / "filtered.jsonl"
    datasets.Dataset.from_list(reward_bench_rows()[:100]).to_json(path)
    with pytest.raises(DatasetError, match="100 rows"):
        load_rewardbench_math(str(path), gen())


def test_rewardmath_picks_chosen_by_position_and_joins_steps(tmp_path):
    rows = [
        {
            "problem": f"x{i}",
            "eval_solution_A": [f"A{i}.1", f"A{i}.2"],
            "eval_solution_B": [f"B{i}"],
            "chosen_position": "A" if i % 2 else "B",
            "model_output_steps": ["s"],
        }
        for i in range(1010)
    ]
    path = tmp_path / "test.jsonl"
    datasets.Dataset.from_list(rows).to_json(path)
    train, test = load_rewardmath(str(path), gen())
    assert (len(train), len(test)) == (10, REWARDMATH_NUM_TEST)
    for row in train.to_list() + test.to_list():
        i = int(row["prompt"][1:])
        a, b = f"A{i}.1 A{i}.2", f"B{i}"
        assert (row["chosen"], row["rejected"]) == ((a, b) if i % 2 else (b, a))


def test_rewardmath_missing_column_is_named(tmp_path):
    path = tmp_path / "test.jsonl"
    datasets.Dataset.from_list([{"problem": "x", "eval_solution_A": ["a"], "eval_solution_B": ["b"]}]).to_json(path)
    with pytest.raises(DatasetError, match="'chosen_position'"):
        load_rewardmath(str(path), gen())


def test_reward_bench_keeps_every_subset_with_its_label(reward_bench_file):
    train, test = load_reward_bench(reward_bench_file, gen())
    assert test.column_names == ["prompt", "chosen", "rejected", "subset"]
    assert len(test) == len(reward_bench_rows()) and test["subset"] == [r["subset"] for r in reward_bench_rows()]
    assert len(train) == len(test)
