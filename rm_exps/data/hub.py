"""The paper's real-world preference datasets, mapped to prompt/chosen/rejected (reference §6.2).

Each loader reads the hub dataset (source=None; real code, needs network) or a local copy in the
same schema (source = a .json/.jsonl/.parquet file or a folder, see rm_exps.data.local), so the
same mapping runs offline. Datasets without their own test split hold rows out with one randperm
of the shared generator (last rows of the permutation -> test), exactly as the reference does, so
with the prepare pipeline's seed the held-out rows match the shipped data.
"""

import datasets
import torch

from rm_exps.data.errors import DatasetError
from rm_exps.data.local import load_local, pick_split, require_columns

ULTRAFEEDBACK = "HuggingFaceH4/ultrafeedback_binarized"
# The digest records only the prefix 3949bf5f… of the reference's revision; the hub does not resolve
# a prefix, so this one is unpinned.
ULTRAFEEDBACK_REVISION = None
REWARD_BENCH = "allenai/reward-bench"
# The digest gives the prefixes 168d848c… / ec2261b4…; the full hashes below are the ones recorded in
# the reference's shipped dataset_info.json (download_checksums URLs).
REWARD_BENCH_REVISION = "168d848cdbbea9764fae4a544dc9ca1e6cca4931"
REWARDMATH = "RewardMATH/RewardMATH_pairwise"
REWARDMATH_REVISION = "ec2261b4103dd5083b115eb40bed41023790108a"

REWARDBENCH_MATH_NUM_TEST = 400
# The reference code holds out 492 rows, but its shipped data (train 84 / test 900 of 984 rows) was made
# with 900; we follow the data so the prepared split reproduces the shipped one.
REWARDBENCH_CODE_NUM_TEST = 900
REWARDMATH_NUM_TEST = 1000

PAIR_COLUMNS = ["prompt", "chosen", "rejected"]
Splits = tuple[datasets.Dataset, datasets.Dataset]


def _load_splits(source: str | None, hub_id: str, revision: str | None, names: list[str]) -> list[datasets.Dataset]:
    if source is None:
        return datasets.load_dataset(hub_id, revision=revision, split=names)
    dd = load_local(source)
    if len(names) == 1:
        return [pick_split(dd, names[0], source)]
    missing = [name for name in names if name not in dd]
    if missing:
        raise DatasetError(f"{source}: missing split(s) {missing} of {hub_id} (splits: {', '.join(dd)})")
    return [dd[name] for name in names]


def _hold_out(ds: datasets.Dataset, num_test: int, generator: torch.Generator, where: str) -> Splits:
    """One randperm: its first len-num_test rows -> train, the rest -> test."""
    if len(ds) <= num_test:
        raise DatasetError(f"{where}: {len(ds)} rows, need more than the {num_test} held out for test")
    perm = torch.randperm(len(ds), generator=generator).tolist()
    cut = len(ds) - num_test
    return ds.select(perm[:cut]), ds.select(perm[cut:])


def _ultrafeedback_pairs(ds: datasets.Dataset, where: str) -> datasets.Dataset:
    require_columns(ds, PAIR_COLUMNS + ["score_chosen", "score_rejected"], where)
    ds = ds.filter(lambda c, r: c > r, input_columns=["score_chosen", "score_rejected"], keep_in_memory=True)
    return ds.map(
        lambda ex: {
            "prompt": ex["prompt"],
            "chosen": ex["chosen"][1]["content"],  # [user, assistant]: the assistant turn
            "rejected": ex["rejected"][1]["content"],
        },
        remove_columns=ds.column_names,
        keep_in_memory=True,
    )


def load_ultrafeedback(source: str | None, generator: torch.Generator) -> Splits:
    """train_prefs/test_prefs with score_chosen > score_rejected; responses = the assistant turn.
    The dataset has its own test split, so the generator is not used."""
    train, test = _load_splits(source, ULTRAFEEDBACK, ULTRAFEEDBACK_REVISION, ["train_prefs", "test_prefs"])
    where = source or ULTRAFEEDBACK
    return _ultrafeedback_pairs(train, f"{where} [train_prefs]"), _ultrafeedback_pairs(test, f"{where} [test_prefs]")


def _reward_bench(source: str | None, keep_subset, num_test: int, generator: torch.Generator) -> Splits:
    (ds,) = _load_splits(source, REWARD_BENCH, REWARD_BENCH_REVISION, ["filtered"])
    where = f"{source or REWARD_BENCH} [filtered]"
    require_columns(ds, PAIR_COLUMNS + ["subset"], where)
    ds = ds.filter(keep_subset, input_columns="subset", keep_in_memory=True).select_columns(PAIR_COLUMNS)
    return _hold_out(ds, num_test, generator, where)


def load_rewardbench_math(source: str | None, generator: torch.Generator) -> Splits:
    """reward-bench `filtered`, subset math-prm (447 rows); 400 held out for test."""
    return _reward_bench(source, lambda s: s == "math-prm", REWARDBENCH_MATH_NUM_TEST, generator)


def load_rewardbench_code(source: str | None, generator: torch.Generator) -> Splits:
    """reward-bench `filtered`, subsets hep-* (984 rows); 900 held out for test."""
    return _reward_bench(source, lambda s: s.startswith("hep"), REWARDBENCH_CODE_NUM_TEST, generator)


def load_reward_bench(source: str | None, generator: torch.Generator) -> Splits:
    """reward-bench `filtered` (2,985 pairs), every subset, with the `subset` column kept so the
    evaluator reports per-subset accuracy and the section scores. A benchmark, not training data:
    it has no train split, so both splits hold every pair (the generator is not used)."""
    (ds,) = _load_splits(source, REWARD_BENCH, REWARD_BENCH_REVISION, ["filtered"])
    require_columns(ds, PAIR_COLUMNS + ["subset"], f"{source or REWARD_BENCH} [filtered]")
    ds = ds.select_columns(PAIR_COLUMNS + ["subset"])
    return ds, ds


def _rewardmath_pair(ex: dict) -> dict:
    chosen, rejected = ex["eval_solution_A"], ex["eval_solution_B"]
    if ex["chosen_position"] != "A":
        chosen, rejected = rejected, chosen
    return {"prompt": ex["problem"], "chosen": " ".join(chosen), "rejected": " ".join(rejected)}


def load_rewardmath(source: str | None, generator: torch.Generator) -> Splits:
    """RewardMATH_pairwise `test` (4,347 rows); solutions are step lists joined by spaces; 1000 held out."""
    (ds,) = _load_splits(source, REWARDMATH, REWARDMATH_REVISION, ["test"])
    where = f"{source or REWARDMATH} [test]"
    require_columns(ds, ["problem", "eval_solution_A", "eval_solution_B", "chosen_position"], where)
    ds = ds.map(_rewardmath_pair, remove_columns=ds.column_names, keep_in_memory=True)
    return _hold_out(ds, REWARDMATH_NUM_TEST, generator, where)
