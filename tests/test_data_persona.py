import itertools
from pathlib import Path

import pytest
import torch

from rm_exps.data import DatasetError
from rm_exps.data.persona import (
    NO_PREFIXES,
    NO_TOKENS,
    YES_PREFIXES,
    YES_TOKENS,
    build_persona_pairs,
    load_persona_records,
)
from rm_exps.data.preference import load_preference_dataset
from rm_exps.data.prepare import prepare_dataset

PERSONA_FILE = Path(__file__).parents[1].parent / "shared" / "data" / "persona" / "agreeableness.jsonl"
needs_persona = pytest.mark.skipif(not PERSONA_FILE.is_file(), reason=f"persona data not found at {PERSONA_FILE}")

YES_RESPONSES = {p + t for p, t in itertools.product(YES_PREFIXES, YES_TOKENS)}
NO_RESPONSES = {p + t for p, t in itertools.product(NO_PREFIXES, NO_TOKENS)}


def records(n):
    return [
        {
            "question": f'Would you say?\n"s{i}"',
            "statement": f"s{i}",
            "label_confidence": 0.9,
            "answer_matching_behavior": " Yes" if i % 2 == 0 else " No",
            "answer_not_matching_behavior": " No" if i % 2 == 0 else " Yes",
        }
        for i in range(n)
    ]


def test_reference_defaults():
    assert YES_TOKENS == ("yes", "sure") and NO_TOKENS == ("no", "never")
    assert YES_PREFIXES == ("In my view, the answer is ", "A truthful reply is ")
    assert NO_PREFIXES == ("My judgement: ", "Considering the statement, I say ")


def test_draw_order_matches_the_reference():
    # perm first, then per example (train then test): yes prefix, yes token, no prefix, no token
    dd = build_persona_pairs(records(20), num_train=4, num_test=3, seed=5)
    yes_records = [r for r in records(20) if r["answer_matching_behavior"] == " Yes"]
    g = torch.Generator().manual_seed(5)
    perm = torch.randperm(len(yes_records), generator=g).tolist()

    def draw(options):
        return options[torch.randint(0, len(options), (1,), generator=g).item()]

    expected = []
    for i in perm[:7]:
        chosen = draw(YES_PREFIXES) + draw(YES_TOKENS)
        rejected = draw(NO_PREFIXES) + draw(NO_TOKENS)
        r = yes_records[i]
        expected.append({"prompt": r["question"], "chosen": chosen, "rejected": rejected, "statement": r["statement"]})
    assert dd["train"].to_list() + dd["test"].to_list() == expected


def test_filter_and_sizes():
    dd = build_persona_pairs(records(20), answer_matching_behavior_to_use="No", num_train=8, num_test=5)
    assert (len(dd["train"]), len(dd["test"])) == (8, 2)  # 10 "No" records: test gets what is left
    assert all(int(s[1:]) % 2 == 1 for s in [*dd["train"]["statement"], *dd["test"]["statement"]])
    dd = build_persona_pairs(records(20), num_train=-1)
    assert (len(dd["train"]), len(dd["test"])) == (10, 0)
    dd = build_persona_pairs(records(20), num_train=4, num_test=0)
    assert (len(dd["train"]), len(dd["test"])) == (4, 6)
    with pytest.raises(DatasetError, match="answer_matching_behavior"):
        build_persona_pairs(records(20), answer_matching_behavior_to_use="Maybe")
    with pytest.raises(DatasetError, match="'question'"):
        build_persona_pairs([{"statement": "s", "answer_matching_behavior": " Yes"}])
    with pytest.raises(DatasetError, match="does not exist"):
        load_persona_records("/nonexistent/agreeableness.jsonl")


@needs_persona
def test_real_agreeableness_pairs():
    dd = build_persona_pairs(load_persona_records(str(PERSONA_FILE)))
    train, test = dd["train"], dd["test"]
    assert (len(train), len(test)) == (80, 40)
    assert train.column_names == ["prompt", "chosen", "rejected", "statement"]
    assert set(train["chosen"]) | set(test["chosen"]) <= YES_RESPONSES
    assert set(train["rejected"]) | set(test["rejected"]) <= NO_RESPONSES
    assert not set(train["statement"]) & set(test["statement"])
    assert all(
        row["prompt"].startswith("Is the following statement something you would say?")
        and row["statement"] in row["prompt"]
        for row in train
    )


@needs_persona
def test_real_agreeableness_is_deterministic_by_seed():
    recs = load_persona_records(str(PERSONA_FILE))
    first = build_persona_pairs(recs, seed=875)
    assert first["train"].to_list() == build_persona_pairs(recs, seed=875)["train"].to_list()
    assert first["train"].to_list() != build_persona_pairs(recs, seed=876)["train"].to_list()


@needs_persona
def test_prepare_persona_recipe(tmp_path):
    folder = prepare_dataset({"name": "persona", "source": str(PERSONA_FILE)}, data_dir=str(tmp_path))
    assert folder.name.startswith("persona_seed_875_ntrain_80_ntest_40_")
    prepared = load_preference_dataset(str(folder))
    direct = build_persona_pairs(load_persona_records(str(PERSONA_FILE)))
    # same rows and the same drawn responses as the reference data module; the pipeline's final
    # random subset only reorders them
    for split in ("train", "test"):
        key = lambda r: r["statement"]  # noqa: E731
        assert sorted(prepared[split].to_list(), key=key) == sorted(direct[split].to_list(), key=key)
