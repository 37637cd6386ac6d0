"""The run's evaluators built from its config: which kinds a run has, and what each is given."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
from accelerate import Accelerator
from torch.utils.data import DataLoader

from rm_exps.config import RunConfig
from rm_exps.eval.best_of_n import BestOfNEvaluator, SampleSet
from rm_exps.eval.generation import Decoding
from rm_exps.eval.ham_cycle import HamCycleGenerationEvaluator
from rm_exps.eval.judge import judge_from_config
from rm_exps.eval.pairwise import PairwiseEvaluator
from rm_exps.eval.persona import PersonaShiftEvaluator
from rm_exps.eval.policy import PolicyEvaluator
from rm_exps.eval.sampling import cached_samples
from rm_exps.outputs import BEST_OF_N_DIR, DPO_PAIRS_DIR
from rm_exps.plan import no_dpo_prompts_message
from rm_exps.run_data import RunData, full_train_split

if TYPE_CHECKING:
    from rm_exps.eval.agentic import AgenticEvaluator


@dataclass
class Evaluators:
    """A run's evaluators, in validation order; None where the run has no evaluator of that kind.
    The pairwise one (every run) is added by the trainer step, over the prepared evaluation loaders."""

    ham_cycle: HamCycleGenerationEvaluator | None = None
    persona: PersonaShiftEvaluator | None = None
    agentic: AgenticEvaluator | None = None
    best_of_n: BestOfNEvaluator | None = None
    policy: PolicyEvaluator | None = None
    pairwise: PairwiseEvaluator | None = None

    def in_order(self) -> list[Any]:
        """The pairwise evaluator first, then the others in field order."""
        return [e for e in (self.pairwise, *self._others()) if e is not None]

    def own_loaders(self) -> list[DataLoader]:
        """The loaders of evaluators that batch their own examples (their frozen quantities are precomputed)."""
        return [loader for e in self._others() if e is not None for loader in getattr(e, "loaders", {}).values()]

    def _others(self) -> list[Any]:
        return [getattr(self, f.name) for f in fields(self) if f.name != "pairwise"]


def setup_evaluators(
    config: RunConfig, tokenizer: Any, objective: Any, data: RunData, accelerator: Accelerator, run_dir: Path
) -> Evaluators:
    """The evaluators the run's config and objective call for (all but the pairwise one)."""
    evaluators = Evaluators()
    if config.is_ham_cycle_task and objective.trains_policy:
        evaluators.ham_cycle = ham_cycle_generation(config, tokenizer, objective, data.train, data.test)
    if config.is_persona:
        evaluators.persona = persona_shift(config, tokenizer, objective, data.train, data.test)
    if config.agentic is not None:
        from rm_exps.eval.agentic import agentic_evaluator

        evaluators.agentic = agentic_evaluator(
            config.agentic, objective, tokenizer, config.effective_eval_batch_size, run_dir
        )
    if config.best_of_n.policy is not None:
        evaluators.best_of_n = best_of_n(config, tokenizer, objective, data.train, data.test, accelerator, run_dir)
    if config.best_of_n.policy_eval_num_prompts != 0 and objective.trains_policy:
        evaluators.policy = policy_evaluation(config, tokenizer, objective, data.test, accelerator)
    return evaluators


def prompts_and_answers(
    ds: Any, n: int, seed: int, exclude: frozenset[str] = frozenset()
) -> tuple[list[str], list[str] | None]:
    """Distinct prompts of a split (minus `exclude`), a seeded subset of n (<= 0: all), with the
    gold `answer` column when the data has one."""
    from rm_exps.data.preference import subsample

    has_answers = "answer" in ds.column_names
    answers_of: dict[str, str] = {}
    for prompt, answer in zip(ds["prompt"], ds["answer"] if has_answers else [""] * len(ds)):
        if prompt not in exclude:
            answers_of.setdefault(prompt, answer)
    if not answers_of:
        raise ValueError(
            "no prompts left for sampling: every train prompt is a training or test prompt of this "
            "run (make the dataset's train split larger than num_train_samples)"
        )
    prompts = list(subsample(datasets.Dataset.from_dict({"prompt": list(answers_of)}), n, seed, sort=True)["prompt"])
    return prompts, ([answers_of[p] for p in prompts] if has_answers else None)


def persona_shift(config: RunConfig, tokenizer: Any, objective: Any, train: Any, test: Any) -> PersonaShiftEvaluator:
    """Rewards of Persona answers shifted to the evaluation yes/no tokens and prefixes."""
    return PersonaShiftEvaluator(
        objective,
        tokenizer,
        {"train": train, "test": test},
        config.persona.eval_yes_tokens,
        config.persona.eval_no_tokens,
        config.persona.eval_yes_prefixes,
        config.persona.eval_no_prefixes,
        seed=config.dataset_prep_random_seed,
        batch_size=config.effective_eval_batch_size,
    )


def best_of_n(
    config: RunConfig,
    tokenizer: Any,
    objective: Any,
    train: Any,
    test: Any,
    accelerator: Accelerator,
    run_dir: Path,
) -> BestOfNEvaluator:
    """Samples of `bon_policy` for the test prompts (and train prompts for DPO pairs), scored by this run."""
    bon, seed = (
        config.best_of_n,
        config.dataset_prep_random_seed,
    )  # not random_seed: every RM of a plan scores the same samples
    decoding = Decoding(
        n=max(bon.n),
        max_new_tokens=bon.max_new_tokens,
        do_sample=True,
        temperature=bon.temperature,
        top_p=bon.top_p,
        batch_size=bon.batch_size,
        seed=seed,
    )
    dtype = config.resolved_precision.frozen_dtype
    sets = {}
    splits = [("test", test, bon.num_prompts, frozenset())]
    if bon.dpo_pairs_num_prompts != 0:
        # Prompts of the whole train split that the reward model was not trained on (and, by default,
        # no test prompt): the policy is aligned on prompts new to the reward model.
        full_train = full_train_split(config)
        exclude = frozenset(train["prompt"]) | (
            frozenset(test["prompt"]) if bon.dpo_pairs_exclude_test_prompts else frozenset()
        )
        if not set(full_train["prompt"]) - exclude:
            raise ValueError(
                no_dpo_prompts_message(
                    bon.dpo_pairs_num_prompts,
                    config.num_train_samples,
                    len(full_train),
                    len(train),
                    len(exclude),
                    bon.dpo_pairs_exclude_test_prompts,
                )
            )
        splits.append(("train", full_train, bon.dpo_pairs_num_prompts, exclude))
    for name, ds, n, exclude in splits:
        prompts, answers = prompts_and_answers(ds, n, seed, exclude)
        samples = cached_samples(
            bon.policy, prompts, decoding, config.data_files_dir, accelerator, dtype, config.model_cache_dir
        )
        sets[name] = SampleSet(prompts, answers, samples)
    reference = None if bon.reference == "first" else Path(bon.reference)
    return BestOfNEvaluator(
        objective,
        tokenizer,
        sets,
        bon.n,
        Path(run_dir) / BEST_OF_N_DIR,
        config.effective_eval_batch_size,
        judge=judge_from_config(config),
        reference_dir=reference,
        pairs_dir=Path(run_dir) / DPO_PAIRS_DIR if bon.dpo_pairs_num_prompts != 0 else None,
        selection=bon.selection,
        max_answer_tokens=config.judge.max_answer_tokens,
        min_gap=bon.dpo_pairs_min_gap,
    )


def policy_evaluation(
    config: RunConfig, tokenizer: Any, objective: Any, test: Any, accelerator: Accelerator
) -> PolicyEvaluator:
    """Greedy responses of the trained policy vs the starting policy (`model`) on test prompts."""
    bon = config.best_of_n
    prompts, answers = prompts_and_answers(test, bon.policy_eval_num_prompts, config.dataset_prep_random_seed)
    decoding = Decoding(
        n=1,
        max_new_tokens=bon.max_new_tokens,
        do_sample=False,
        batch_size=bon.batch_size,
        seed=config.dataset_prep_random_seed,
    )
    start = cached_samples(
        config.model,
        prompts,
        decoding,
        config.data_files_dir,
        accelerator,
        config.resolved_precision.frozen_dtype,
        config.model_cache_dir,
    )
    return PolicyEvaluator(
        tokenizer, prompts, answers, [s[0] for s in start], objective.hf_model, decoding, judge_from_config(config)
    )


def ham_cycle_generation(
    config: RunConfig, tokenizer: Any, objective: Any, train: Any, test: Any
) -> HamCycleGenerationEvaluator:
    """Sampled cycles of the trained policy for seeded subsets of the train and test graphs."""
    from rm_exps.data.preference import subsample

    n, seed = config.ham_cycle.num_samples, config.dataset_prep_random_seed
    prompts = {
        split: list(subsample(ds, n, seed, sort=True)["prompt"]) for split, ds in (("train", train), ("test", test))
    }
    return HamCycleGenerationEvaluator(
        tokenizer,
        prompts,
        objective.hf_model,
        num_tries=config.ham_cycle.num_tries,
        max_new_tokens=config.ham_cycle.max_new_tokens,
        do_sample=config.ham_cycle.do_sample,
        batch_size=config.ham_cycle.batch_size,
        seed=config.random_seed,
    )
