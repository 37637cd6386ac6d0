"""Length-grouped training batches and length-sorted evaluation: same examples, less padding."""

import torch

from rm_exps.batching import (
    EncodedPairs,
    LengthGroupedSampler,
    PairCollator,
    SharedPromptCollator,
    attach_in_chunks,
    pair_length,
)


def pairs(n: int, seed: int = 0) -> EncodedPairs:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 200, (n, 3), generator=g).tolist()
    return EncodedPairs(
        [
            {"prompt_ids": [1] * p, "chosen_ids": [2] * c, "rejected_ids": [3] * r, "id": i}
            for i, (p, c, r) in enumerate(lengths)
        ]
    )


DEFAULT_COLLATE = PairCollator(0)


def padding_fraction(data: EncodedPairs, order: list[int], batch_size: int, collate=DEFAULT_COLLATE) -> float:
    real, fed = 0, 0
    for start in range(0, len(order), batch_size):
        batch = collate([data[i] for i in order[start : start + batch_size]])
        real += int(batch["token_mask"].sum())  # tokens, for either layout (a shared-prompt mask is [B, 1, L, L])
        fed += batch["token_mask"].numel()
    return 1 - real / fed


def test_every_example_once_per_epoch_in_a_new_order():
    data = pairs(1000)
    sampler = LengthGroupedSampler(
        data.lengths(), batch_size=4, generator=torch.Generator().manual_seed(1), mega_batches=10
    )
    first, second = list(sampler), list(sampler)
    assert sorted(first) == sorted(second) == list(range(1000))
    assert first != second  # the generator carries over: each epoch is reshuffled


def test_grouping_pads_less_than_random_batches_and_is_seeded():
    data = pairs(512)
    grouped = list(LengthGroupedSampler(data.lengths(), 4, torch.Generator().manual_seed(3), mega_batches=16))
    shuffled = torch.randperm(512, generator=torch.Generator().manual_seed(3)).tolist()
    assert padding_fraction(data, grouped, 4) < 0.5 * padding_fraction(data, shuffled, 4)
    assert grouped == list(LengthGroupedSampler(data.lengths(), 4, torch.Generator().manual_seed(3), mega_batches=16))
    # within a mega-batch the order is by length, longest first
    lengths = [pair_length(data[i]) for i in grouped[:64]]
    assert lengths == sorted(lengths, reverse=True)


def test_shared_prompt_rows_are_grouped_by_their_own_length():
    """One row per pair (prompt + chosen + rejected): grouping by that length pads less than by
    prompt + the longer response."""
    data = pairs(128)
    order = {
        shared: list(LengthGroupedSampler(data.lengths(shared), 4, torch.Generator().manual_seed(3), mega_batches=8))
        for shared in (False, True)
    }
    assert data.lengths(True)[0] == sum(len(data[0][k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
    padding = {shared: padding_fraction(data, o, 4, SharedPromptCollator(0)) for shared, o in order.items()}
    assert padding[True] < padding[False]


def test_frozen_values_are_computed_longest_first_for_every_example():
    data = pairs(10)
    chunks = []

    def compute(chunk):
        chunks.append([pair_length(e) for e in chunk])
        return [e["id"] for e in chunk]

    attach_in_chunks([data], "value", 3, compute)
    assert all(e["value"] == e["id"] for e in data.examples)
    assert [n for c in chunks for n in c] == sorted(data.lengths(), reverse=True)
    assert [len(c) for c in chunks] == [3, 3, 3, 1]


def test_sorted_evaluation_keeps_the_examples():
    data = pairs(50)
    ordered = data.select(data.length_order())
    assert sorted(e["id"] for e in ordered.examples) == list(range(50))
    assert [pair_length(e) for e in ordered.examples] == sorted(data.lengths(), reverse=True)
    assert ordered.examples[0] is max(data.examples, key=pair_length)  # shared, so precomputed values reach both


def test_a_length_grouped_run_trains_on_every_pair(tmp_path):
    import json

    from test_runner import write_pairs

    import run_plan
    from rm_exps.outputs import read_json

    data = write_pairs(tmp_path / "pairs", n_train=6, n_test=2)
    plan = {
        "configurations": [
            {
                "base_config": {
                    "experiment_name": "grouped",
                    "model": "tiny-random-llama",
                    "objective": "ex_rm",
                    "dataset_path": data,
                    "outputs_dir": str(tmp_path / "out"),
                    "epochs": 2,
                    "batch_size": 2,
                    "num_test_samples": 2,
                    "group_by_length": True,
                }
            }
        ]
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert run_plan.main(["--plan", str(tmp_path / "plan.json")]) == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "grouped" / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in records if r["kind"] == "train_epoch"] == [3, 6]  # 3 batches of 2 per epoch
    assert read_json(tmp_path / "out" / "grouped" / "summary.json")["status"] == "completed"
