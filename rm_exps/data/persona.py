"""The Persona controlled experiment's data: a token-level shift with fixed meaning (reference §6.4).

Statements an agreeable persona endorses become pairs whose chosen response says "yes" and whose
rejected response says "no", each built from a random prefix and a random token. Training uses one
set of prefixes/tokens; evaluation swaps in unseen ones (rm_exps/eval), so a reward model that
learned the meaning generalizes and one that learned the tokens does not. The draws follow the
reference exactly: one generator gives the split permutation, then, per example (train then test),
the yes prefix, yes token, no prefix and no token.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rm_exps.data.errors import DatasetError
from rm_exps.data.local import require_columns

if TYPE_CHECKING:  # imported where data is built: the recipe's defaults below are read at plan validation
    import datasets
    import torch

HUB_ID = "Anthropic/model-written-evals"
HUB_FILE = "persona/agreeableness.jsonl"
RECORD_COLUMNS = ("question", "statement", "answer_matching_behavior")
PAIR_COLUMNS = ("prompt", "chosen", "rejected", "statement")  # all strings

# The reference plans' training sets (its eval sets live with the Persona evaluator).
YES_TOKENS = ("yes", "sure")
NO_TOKENS = ("no", "never")
YES_PREFIXES = ("In my view, the answer is ", "A truthful reply is ")
NO_PREFIXES = ("My judgement: ", "Considering the statement, I say ")


def load_persona_records(source: str | None) -> datasets.Dataset:
    """The persona jsonl: a local path, or None for the hub file (needs network)."""
    import datasets

    if source is None:
        return datasets.load_dataset(HUB_ID, data_files=HUB_FILE, split="train")
    if not Path(source).is_file():
        raise DatasetError(f"persona records file does not exist: {source}")
    return datasets.load_dataset("json", data_files=str(source), split="train")


def _pick(options, generator: torch.Generator) -> str:
    import torch

    return options[torch.randint(0, len(options), (1,), generator=generator).item()]


def _pairs(records: datasets.Dataset, generator, yes_tokens, no_tokens, yes_prefixes, no_prefixes) -> datasets.Dataset:
    import datasets

    columns = {c: [] for c in PAIR_COLUMNS}
    for record in records:
        yes_prefix = _pick(yes_prefixes, generator)
        yes_token = _pick(yes_tokens, generator)
        no_prefix = _pick(no_prefixes, generator)
        no_token = _pick(no_tokens, generator)
        columns["prompt"].append(record["question"])
        columns["chosen"].append(yes_prefix + yes_token)
        columns["rejected"].append(no_prefix + no_token)
        columns["statement"].append(record["statement"])
    features = datasets.Features({c: datasets.Value("string") for c in PAIR_COLUMNS})
    return datasets.Dataset.from_dict(columns, features=features)


def build_persona_pairs(
    records,
    answer_matching_behavior_to_use: str = "Yes",
    num_train: int = 80,
    num_test: int = 40,
    seed: int | torch.Generator = 875,
    yes_tokens=YES_TOKENS,
    no_tokens=NO_TOKENS,
    yes_prefixes=YES_PREFIXES,
    no_prefixes=NO_PREFIXES,
) -> datasets.DatasetDict:
    """DatasetDict{train, test} of prompt (the question) / chosen (yes) / rejected (no) / statement.

    Keeps records whose answer_matching_behavior is `answer_matching_behavior_to_use` (case and
    spaces ignored; "" keeps all), then the first num_train rows of a seeded permutation are train
    and the next min(rest, num_test) are test; <= 0 means all (the rest, for test). `seed` may be a
    torch.Generator to share a stream.
    """
    import datasets
    import torch

    if isinstance(records, list):
        records = datasets.Dataset.from_list(records)
    require_columns(records, RECORD_COLUMNS, "persona records")
    for name, options in [
        ("yes_tokens", yes_tokens),
        ("no_tokens", no_tokens),
        ("yes_prefixes", yes_prefixes),
        ("no_prefixes", no_prefixes),
    ]:
        if not options:
            raise DatasetError(f"persona: {name} is empty")
    wanted = answer_matching_behavior_to_use.strip().lower()
    if wanted:
        records = records.filter(
            lambda a: a.strip().lower() == wanted, input_columns="answer_matching_behavior", keep_in_memory=True
        )
    if len(records) == 0:
        raise DatasetError(f"persona: no records with answer_matching_behavior {answer_matching_behavior_to_use!r}")

    generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    num_train = min(len(records), num_train) if num_train > 0 else len(records)
    num_test = min(len(records) - num_train, num_test) if num_test > 0 else len(records) - num_train
    perm = torch.randperm(len(records), generator=generator).tolist()
    train = records.select(perm[:num_train])
    test = records.select(perm[num_train : num_train + num_test])
    options = (yes_tokens, no_tokens, yes_prefixes, no_prefixes)
    return datasets.DatasetDict(
        {"train": _pairs(train, generator, *options), "test": _pairs(test, generator, *options)}
    )
