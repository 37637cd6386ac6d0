"""A run's data step: its train/test splits and evaluation sets, encoded for its objective, in loaders."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from rm_exps.batching import (
    EncodedPairs,
    LengthGroupedSampler,
    LengthLimits,
    PairCollator,
    SharedPromptCollator,
    encode_pairs,
    no_pairs_left_message,
)
from rm_exps.config import RunConfig
from rm_exps.models import load_tokenizer

log = logging.getLogger("rm_exps")


@dataclass
class RunData:
    """The run's data once encoded. Loaders are not yet prepared by accelerate (the trainer step does
    that); `collate` batches every evaluation loader (and the precomputation of frozen quantities)."""

    train: Any  # the raw splits (a datasets.Dataset each)
    test: Any
    train_pairs: EncodedPairs
    train_loader: DataLoader
    order_generator: torch.Generator  # the train loader's shuffle generator (a checkpoint saves its state)
    eval_loaders: dict[str, DataLoader]  # `train`, `test`, `{name}_{split}`: longest pairs first
    subsets: dict[str, Sequence[str]]  # per evaluation set with a `subset` column: one label per pair, in loader order
    collate: Any


def setup_data(
    config: RunConfig, tokenizer: Any, objective: Any, accelerator: Accelerator, counts: dict[str, Any]
) -> RunData:
    """Load, encode and batch the run's data; sample counts and what the length limits did go to
    `counts` as they are known (the summary reports them, also when a later split fails the run)."""
    with accelerator.main_process_first():  # recipes are prepared once, by the main process
        train, test = load_train_test(config)
        eval_sets = evaluation_sets(config, train, test)
    counts.update({"num_train_samples": len(train), "num_test_samples": len(test)})
    log.info("num train samples %d, num test samples %d; train sample: %s", len(train), len(test), dict(train[0]))

    fmt = objective.input_format
    train_pairs = encode_split("train", train, tokenizer, fmt, config, counts)
    train_loader, generator = build_train_loader(config, train_pairs, objective.train_collator(tokenizer.pad_token_id))
    # Evaluation batches go longest first (little padding); benchmark-style sets (RewardBench) label each
    # pair with its subset, reordered alike, for per-subset and section accuracies.
    collate = (SharedPromptCollator if config.shares_prompt else PairCollator)(tokenizer.pad_token_id)
    eval_loaders, subsets = {}, {}
    for key, ds in eval_sets.items():
        pairs = encode_split(f"eval {key}", ds, tokenizer, fmt, config, counts)
        counts.setdefault("eval_pairs", {})[key] = len(pairs)  # what an accuracy's interval is over
        order = pairs.length_order(config.shares_prompt)
        eval_loaders[key] = DataLoader(
            pairs.select(order), batch_size=config.effective_eval_batch_size, collate_fn=collate
        )
        if "subset" in ds.column_names:
            subsets[key] = [ds["subset"][pairs.rows[i]] for i in order]
    return RunData(train, test, train_pairs, train_loader, generator, eval_loaders, subsets, collate)


def build_train_loader(config: RunConfig, pairs: EncodedPairs, collate: Any) -> tuple[DataLoader, torch.Generator]:
    """The shuffled train loader of `batch_size` pairs per batch (length-grouped with group_by_length)
    and its shuffle generator. With micro_batch_size each batch comes as a list of chunks: the same
    pairs in the same order whatever the chunk size, so data order and resume positions do not change."""
    if config.micro_batch_size is not None:
        collate = MicroBatchCollator(collate, config.micro_batch_size)
    generator = torch.Generator().manual_seed(config.random_seed)
    if config.group_by_length:
        sampler = LengthGroupedSampler(pairs.lengths(config.shares_prompt), config.batch_size, generator)
        return DataLoader(pairs, batch_size=config.batch_size, sampler=sampler, collate_fn=collate), generator
    loader = DataLoader(pairs, batch_size=config.batch_size, shuffle=True, collate_fn=collate, generator=generator)
    return loader, generator


@dataclass
class MicroBatchCollator:
    """Collates a batch as consecutive chunks of at most `micro_batch_size` pairs, each on its own (a
    list of batches), so forward and backward hold one chunk at a time. A stateful collator (the GRAM
    order coins) draws per chunk what it would have drawn for the whole batch."""

    collate: Any
    micro_batch_size: int

    def __call__(self, examples: list[dict[str, list[int]]]) -> list[dict[str, torch.Tensor]]:
        return [self.collate(chunk) for chunk in self._chunks(examples)]

    def _chunks(self, items: Sequence[Any]) -> list[Sequence[Any]]:
        return [items[i : i + self.micro_batch_size] for i in range(0, len(items), self.micro_batch_size)]

    def state_dict(self) -> dict[str, Any] | None:
        return self.collate.state_dict() if hasattr(self.collate, "state_dict") else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.collate.load_state_dict(state)

    def skip(self, batch_sizes: Sequence[int]) -> None:
        self.collate.skip([len(chunk) for n in batch_sizes for chunk in self._chunks(range(n))])


def resolve_dataset(source: str | dict, config: RunConfig) -> str:
    """A prepared folder/file path as is; a recipe prepared once and cached under data_files_dir."""
    if isinstance(source, str):
        return source
    from rm_exps.data.prepare import prepare_dataset

    return str(prepare_dataset(source, data_dir=config.data_files_dir, load_tokenizer=load_tokenizer))


def load_train_test(config: RunConfig) -> tuple[Any, Any]:
    """The run's train and test splits, subsampled with dataset_prep_random_seed."""
    from rm_exps.data.preference import load_preference_dataset, subsample

    if config.is_persona:
        from rm_exps.data.persona import build_persona_pairs, load_persona_records

        splits = build_persona_pairs(
            load_persona_records(config.dataset_path),
            config.persona.answer_matching_behavior,
            num_train=config.num_train_samples,
            num_test=config.num_test_samples,
            seed=config.dataset_prep_random_seed,
            yes_tokens=config.persona.yes_tokens,
            no_tokens=config.persona.no_tokens,
            yes_prefixes=config.persona.yes_prefixes,
            no_prefixes=config.persona.no_prefixes,
        )
        return splits["train"], splits["test"]
    splits = load_preference_dataset(resolve_dataset(config.dataset_path, config))
    generator = torch.Generator().manual_seed(config.dataset_prep_random_seed)  # train, then test: one stream
    return (
        subsample(splits["train"], config.num_train_samples, generator),
        subsample(splits["test"], config.num_test_samples, generator),
    )


def full_train_split(config: RunConfig) -> Any:
    """The dataset's whole train split, before subsampling (e.g. the prompts a run did not train on)."""
    from rm_exps.data.preference import load_preference_dataset

    return load_preference_dataset(resolve_dataset(config.dataset_path, config))["train"]


def evaluation_sets(config: RunConfig, train: Any, test: Any) -> dict[str, Any]:
    """`train` (a seeded subset of num_test_samples; with eval_train_subset), `test`, then
    `{name}_{split}` per evaluation set."""
    from rm_exps.data.preference import load_preference_dataset, subsample

    seed = config.dataset_prep_random_seed
    if config.is_persona:  # the reference scores the whole (small) Persona train split
        return {"train": train, "test": test}
    sets = {"train": subsample(train, config.num_test_samples, seed, sort=True)} if config.eval_train_subset else {}
    sets["test"] = test
    for name, path, split in zip(
        config.evaluation_datasets_names, config.evaluation_datasets_paths, config.evaluation_datasets_splits
    ):
        splits = load_preference_dataset(resolve_dataset(path, config))
        if split not in splits:
            raise ValueError(f"evaluation dataset '{name}' has no split '{split}' (it has {', '.join(splits)})")
        sets[f"{name}_{split}"] = subsample(splits[split], config.num_test_samples, seed, sort=True)
    return sets


def encode_split(split: str, ds: Any, tokenizer: Any, fmt: str, config: RunConfig, counts: dict[str, Any]) -> Any:
    """encode_pairs under the run's length limits; what they dropped and truncated goes to the log and
    to counts["length_limits"][split] (the summary). A split they leave without pairs fails the run."""
    limits = LengthLimits(config.max_length, config.max_prompt_length, config.over_length, config.shares_prompt)
    pairs = encode_pairs(ds, tokenizer, fmt, config.judge.max_answer_tokens, limits)
    if pairs.length_counts is not None:
        counts.setdefault("length_limits", {})[split] = pairs.length_counts.summary()
        log.info("length limits (%s), %s: %s", limits.describe(), split, pairs.length_counts.summary())
        if not len(pairs):
            raise ValueError(no_pairs_left_message(split, limits, pairs.length_counts))
    return pairs
