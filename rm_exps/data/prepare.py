"""Build a dataset once into data_dir/<folder>/ and reuse it: the reference's prepare pipeline (§6.1).

A dataset spec is {"name": <recipe>, **options}. Each recipe is a pydantic model listing its options
with defaults, so a spec is validated (typos get "did you mean") before any work, and the folder
name carries a hash of the fully resolved options: same options -> same folder -> no rebuild.

Pipeline, all randomness from ONE torch.Generator seeded with `seed`, in this order:
  1. the recipe's loader -> (train, test), drawing from the generator where it needs to;
  2. optional length filter: prompt <= max_prompt_length and both responses <= max_response_length
     tokens, counted with add_special_tokens=False (the reference counted BOS; we do not);
  3. optional removal of prompts containing "translate"/"translation" (case-insensitive);
  4. random subset: train.select(randperm(len)[:n]) then the same for test (always permuted, n <= 0
     keeps every row, as the reference did).
The result is saved with save_to_disk into a temporary folder, with run_config.json (the resolved
spec) beside dataset_dict.json, and renamed into place, so a folder that exists is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pydantic
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from rm_exps.data import persona
from rm_exps.data.errors import DatasetError
from rm_exps.data.local import is_saved, save_atomically
from rm_exps.progress import quiet_library_output
from rm_exps.suggest import did_you_mean

if TYPE_CHECKING:  # imported where a dataset is built: validating a recipe (at plan time) needs neither
    import datasets
    import torch

log = logging.getLogger(__name__)


class Recipe(BaseModel):
    """Options every dataset shares. Aliases are the reference's CLI spellings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(
        982,
        ge=0,
        validation_alias=AliasChoices("random_seed", "seed"),
        description="Seeds the one generator behind every random draw (always seeded).",
    )
    num_train_samples: int = Field(2000, description="Train rows kept (random subset); <= 0 keeps all.")
    num_test_samples: int = Field(200, description="Test rows kept (random subset); <= 0 keeps all.")
    tokenizer_for_length_filtering: str | None = Field(
        None, description="Model whose tokenizer counts tokens for the length filter; None: no length filter."
    )
    max_prompt_length: int = Field(512, description="Drop pairs whose prompt is longer (tokens); <= 0: no limit.")
    max_response_length: int = Field(
        512, description="Drop pairs where either response is longer (tokens); <= 0: no limit."
    )
    filter_out_translate_prompts: bool = Field(
        False, description="Drop prompts containing 'translate' or 'translation' (case-insensitive)."
    )


class SourcedRecipe(Recipe):
    source: str | None = Field(
        None, description="Local copy in the hub schema (json/jsonl/parquet file or folder); None: the hub."
    )


class HamiltonianCycleRecipe(Recipe):
    num_vertices: int = Field(
        10,
        ge=4,
        validation_alias=AliasChoices("ham_cycle_num_vertices", "num_vertices"),
        description="Vertices per graph (>= 4: on 3 every order is a cycle).",
    )
    edge_p: float = Field(
        0.2,
        ge=0,
        le=1,
        validation_alias=AliasChoices("ham_cycle_edge_p", "edge_p"),
        description="Probability of each edge outside the planted cycle.",
    )
    num_train_graphs: int = Field(
        5000, ge=1, description="Train graphs generated before subsampling (reference: 5000)."
    )
    num_test_graphs: int = Field(200, ge=1, description="Test graphs generated before subsampling (reference: 200).")


class PersonaRecipe(SourcedRecipe):
    seed: int = Field(
        875,
        ge=0,
        validation_alias=AliasChoices("random_seed", "seed"),
        description="Seeds the split permutation and the response draws.",
    )
    num_train_samples: int = Field(80, description="Train statements; <= 0: all.")
    num_test_samples: int = Field(40, description="Test statements, from those left after train; <= 0: all left.")
    source: str | None = Field(None, description=f"Local persona jsonl; None: {persona.HUB_ID} {persona.HUB_FILE}.")
    answer_matching_behavior_to_use: str = Field("Yes", description="Keep records whose matching answer is this.")
    yes_tokens: tuple[str, ...] = Field(
        persona.YES_TOKENS,
        min_length=1,
        validation_alias=AliasChoices("output_tokens_matching_yes", "yes_tokens"),
        description="Tokens ending the chosen (yes) response.",
    )
    no_tokens: tuple[str, ...] = Field(
        persona.NO_TOKENS,
        min_length=1,
        validation_alias=AliasChoices("output_tokens_matching_no", "no_tokens"),
        description="Tokens ending the rejected (no) response.",
    )
    yes_prefixes: tuple[str, ...] = Field(
        persona.YES_PREFIXES,
        min_length=1,
        validation_alias=AliasChoices("prefixes_matching_yes", "yes_prefixes"),
        description="Prefixes of the chosen response.",
    )
    no_prefixes: tuple[str, ...] = Field(
        persona.NO_PREFIXES,
        min_length=1,
        validation_alias=AliasChoices("prefixes_matching_no", "no_prefixes"),
        description="Prefixes of the rejected response.",
    )


class ArithmeticRecipe(Recipe):
    """Synthetic arithmetic word problems (rm_exps.data.arithmetic): pairs plus a gold `answer` column."""

    num_train_samples: int = Field(1000, ge=1, description="Train problems (distinct prompts).")
    num_test_samples: int = Field(200, ge=1, description="Test problems (distinct from the train prompts).")
    max_operand: int = Field(20, ge=3, description="Largest number in a problem (factors of products: at most 12).")


class RewrittenRecipe(Recipe):
    """A preference dataset whose responses an OpenAI-compatible chat model rewrote (§6.5): the
    paper's paraphrase / French / Spanish token-level-shift sets. Built once through
    `prepare_data.py rewrite`'s code (direct mode, resumable) and cached like any recipe; with
    `source` it is read from a rewritten DatasetDict already on disk and no API is called."""

    seed: int = Field(
        517,
        ge=0,
        validation_alias=AliasChoices("random_seed", "seed"),
        description="Seeds the rows picked for rewriting.",
    )
    num_train_samples: int = Field(200, description="Train rows rewritten (random subset); <= 0: all.")
    num_test_samples: int = Field(200, description="Test rows rewritten (random subset); <= 0: all.")
    base: dict | str | None = Field(
        None, description="The dataset whose responses are rewritten: a recipe spec or a prepared folder."
    )
    kind: str = Field("paraphrase", description="paraphrase, translate_french, translate_spanish, or custom.")
    prompt_template: str | None = Field(
        None, description="kind custom: the user message, with {response} where the response goes."
    )
    model: str = Field("gpt-4.1", description="Chat model, as named by the API (OPENAI_BASE_URL, OPENAI_API_KEY).")
    max_tokens: int = Field(512, ge=1, description="Completion token limit of each rewrite.")
    source: str | None = Field(
        None, description="A rewritten DatasetDict on disk (orig_index, orig_chosen, orig_rejected); no API call."
    )

    @model_validator(mode="after")
    def _check(self):
        from rm_exps.data.rewrite import CUSTOM_KIND, TEMPLATES, resolve_template

        if self.source is None and self.base is None:
            raise ValueError("give `base` (the dataset to rewrite) or `source` (a rewritten dataset on disk)")
        if self.source is not None and self.base is not None:
            raise ValueError("give `base` or `source`, not both")
        if isinstance(self.base, dict):
            if self.base.get("name") == "rewritten":
                raise ValueError("`base` cannot itself be a rewritten dataset")
            problem = validate_recipe(self.base)
            if problem:
                raise ValueError(f"base: {problem}")
        if self.kind not in (*TEMPLATES, CUSTOM_KIND):
            raise ValueError(
                f"unknown kind {self.kind!r}{_did_you_mean(self.kind, TEMPLATES)}; "
                f"known: {', '.join(TEMPLATES)}, {CUSTOM_KIND} (with prompt_template)"
            )
        if (self.kind == CUSTOM_KIND) != (self.prompt_template is not None):
            raise ValueError("prompt_template goes with kind 'custom', and kind 'custom' needs a prompt_template")
        if self.prompt_template is not None:
            try:
                resolve_template(None, self.prompt_template)
            except DatasetError as e:
                raise ValueError(str(e)) from None
        return self

    def template(self) -> str:
        from rm_exps.data.rewrite import TEMPLATES

        return self.prompt_template if self.prompt_template is not None else TEMPLATES[self.kind]


class RewardBenchRecipe(SourcedRecipe):
    num_train_samples: int = Field(0, description="Rows kept in the train split (a copy of the benchmark); <= 0: all.")
    num_test_samples: int = Field(0, description="Benchmark pairs kept (random subset); <= 0: all 2,985.")


RECIPES: dict[str, type[Recipe]] = {
    "hamiltonian_cycle": HamiltonianCycleRecipe,
    "persona": PersonaRecipe,
    "ultrafeedback": SourcedRecipe,
    "rewardbench_math": SourcedRecipe,
    "rewardbench_code": SourcedRecipe,
    "rewardmath": SourcedRecipe,
    "reward_bench": RewardBenchRecipe,
    "rewritten": RewrittenRecipe,
    "arithmetic": ArithmeticRecipe,
}


def _load_persona(r: PersonaRecipe, generator: torch.Generator):
    dd = persona.build_persona_pairs(
        persona.load_persona_records(r.source),
        r.answer_matching_behavior_to_use,
        r.num_train_samples,
        r.num_test_samples,
        seed=generator,
        yes_tokens=r.yes_tokens,
        no_tokens=r.no_tokens,
        yes_prefixes=r.yes_prefixes,
        no_prefixes=r.no_prefixes,
    )
    return dd["train"], dd["test"]


REWRITTEN_COLUMNS = ("orig_index", "orig_chosen", "orig_rejected")


def _load_rewritten(r: RewrittenRecipe, generator: torch.Generator, data_dir: str, load_tokenizer: Callable | None):
    """The rewritten train/test: from `source`, or by rewriting `base` (prepared first if a recipe)
    into data_dir/rewritten with the API. The rewrite picks its own rows with `seed`."""
    from rm_exps.data.local import require_columns
    from rm_exps.data.preference import load_preference_dataset
    from rm_exps.data.rewrite import RewriteSpec, RunOptions, rewrite_dataset

    if r.source is not None:
        folder = r.source
    else:
        base = r.base if isinstance(r.base, str) else str(prepare_dataset(r.base, data_dir, load_tokenizer))
        spec = RewriteSpec(
            dataset=os.path.abspath(base),
            template=r.template(),
            kind=r.kind,
            model=r.model,
            num_train_samples=r.num_train_samples,
            num_test_samples=r.num_test_samples,
            seed=r.seed,
            max_tokens=r.max_tokens,
        )
        folder = rewrite_dataset(
            spec,
            RunOptions(
                mode="direct",
                output_dir=str(Path(data_dir) / "rewritten"),
                tokenizer=r.tokenizer_for_length_filtering or "none",
            ),
        )
    dd = load_preference_dataset(str(folder))
    for split in ("train", "test"):
        if split not in dd:
            raise DatasetError(f"{folder}: no {split} split (splits: {', '.join(dd)})")
        require_columns(dd[split], REWRITTEN_COLUMNS, f"{folder} [{split}]")
    return dd["train"], dd["test"]


def _loaders() -> dict[str, Callable]:
    """recipe name -> (recipe, generator, data_dir, load_tokenizer) -> (train, test)."""
    from rm_exps.data import arithmetic, hamiltonian, hub

    return {
        "hamiltonian_cycle": lambda r, g, *_: hamiltonian.build_hamiltonian_cycle(
            r.num_vertices, r.edge_p, r.num_train_graphs, r.num_test_graphs, generator=g
        ),
        "persona": lambda r, g, *_: _load_persona(r, g),
        "ultrafeedback": lambda r, g, *_: hub.load_ultrafeedback(r.source, g),
        "rewardbench_math": lambda r, g, *_: hub.load_rewardbench_math(r.source, g),
        "rewardbench_code": lambda r, g, *_: hub.load_rewardbench_code(r.source, g),
        "rewardmath": lambda r, g, *_: hub.load_rewardmath(r.source, g),
        "reward_bench": lambda r, g, *_: hub.load_reward_bench(r.source, g),
        "rewritten": _load_rewritten,
        "arithmetic": lambda r, g, *_: arithmetic.build_arithmetic(
            r.num_train_samples, r.num_test_samples, r.max_operand, g
        ),
    }


# ----------------------------------------------------------------------------- specs


def option_names(model: type[Recipe], field: str | None = None) -> list[str]:
    """The accepted option keys of a recipe (or of one of its fields): field names and their aliases."""
    names = []
    for name, info in model.model_fields.items():
        if field in (None, name):
            aliases = info.validation_alias.choices if isinstance(info.validation_alias, AliasChoices) else []
            names += [name] + [a for a in aliases if a != name]
    return names


def _did_you_mean(word, candidates) -> str:
    return did_you_mean(word, list(candidates))


def parse_recipe(spec: dict) -> tuple[str, Recipe]:
    """(name, validated options) or DatasetError saying what is wrong."""
    if not isinstance(spec, dict):
        raise DatasetError(f"a dataset spec is a dict {{'name': ..., **options}}, got {type(spec).__name__}")
    name = spec.get("name")
    if name not in RECIPES:
        raise DatasetError(f"unknown dataset {name!r}{_did_you_mean(name, RECIPES)}; known: {', '.join(RECIPES)}")
    model = RECIPES[name]
    options = {k: v for k, v in spec.items() if k != "name"}
    valid = option_names(model)
    for field in model.model_fields:
        given = [k for k in options if k in option_names(model, field)]
        if len(given) > 1:
            raise DatasetError(f"option {field!r} of dataset {name!r} given twice: as {' and '.join(given)}")
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise DatasetError(
            "; ".join(f"unknown option {k!r} for dataset {name!r}{_did_you_mean(k, valid)}" for k in unknown)
            + f" (options: {', '.join(model.model_fields)})"
        )
    try:
        return name, model.model_validate(options)
    except pydantic.ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg']} (got {err['input']!r})"
            if err["loc"]
            else err["msg"].removeprefix("Value error, ")
            for err in e.errors()
        )
        raise DatasetError(f"dataset {name!r}: {problems}") from None


def validate_recipe(spec: dict) -> str | None:
    """None if the spec is valid, else a message naming the problem. Does no work."""
    try:
        parse_recipe(spec)
    except DatasetError as e:
        return str(e)
    return None


def api_credentials_error(spec: dict, data_dir: str) -> str | None:
    """Why a valid spec cannot be built here: a rewrite that is not prepared yet needs an API key."""
    name, r = parse_recipe(spec)
    if not isinstance(r, RewrittenRecipe) or r.source is not None or os.environ.get("OPENAI_API_KEY"):
        return None
    if is_saved(Path(data_dir) / recipe_folder_name(spec), run_config(spec)):
        return None
    return (
        f"dataset 'rewritten' ({r.kind}) is not prepared in {data_dir} and building it calls an "
        "OpenAI-compatible API: set OPENAI_API_KEY (and OPENAI_BASE_URL for a server other than OpenAI's), "
        "or give `source`, a rewritten dataset on disk"
    )


def split_size(source: str | dict, split: str, data_dir: str) -> tuple[int | None, bool]:
    """(rows, at_most) of one split of a dataset path or recipe, without loading or preparing it: a
    path's (or a prepared recipe's) metadata gives the exact count; a recipe not prepared yet says
    at most its num_train_samples / num_test_samples rows (filters may drop some). (None, False)
    when unknown."""
    from rm_exps.data.local import split_num_rows

    if isinstance(source, str):
        return split_num_rows(source, split), False
    try:
        _, r = parse_recipe(source)
    except DatasetError:
        return None, False
    folder = Path(data_dir) / recipe_folder_name(source)
    if is_saved(folder, run_config(source)):
        return split_num_rows(folder, split), False
    n = r.num_train_samples if split == "train" else r.num_test_samples if split == "test" else 0
    return (n, True) if n > 0 else (None, False)


def run_config(spec: dict) -> dict:
    """The fully resolved spec (canonical names, defaults filled), as stored in run_config.json."""
    name, recipe = parse_recipe(spec)
    return {"name": name, **recipe.model_dump(mode="json")}


def recipe_folder_name(spec: dict) -> str:
    """Readable, deterministic: <name>[_v{N}_p{p}]_seed_S_ntrain_N_ntest_M[_no_translate_prompts]_<hash8>."""
    name, r = parse_recipe(spec)
    label = (
        f"{name}_v{r.num_vertices}_p{r.edge_p}"
        if isinstance(r, HamiltonianCycleRecipe)
        else f"{name}_{r.kind}"
        if isinstance(r, RewrittenRecipe)
        else name
    )
    translate = "_no_translate_prompts" if r.filter_out_translate_prompts else ""
    digest = hashlib.sha256(json.dumps(run_config(spec), sort_keys=True).encode()).hexdigest()[:8]
    return f"{label}_seed_{r.seed}_ntrain_{r.num_train_samples}_ntest_{r.num_test_samples}{translate}_{digest}"


# ----------------------------------------------------------------------------- pipeline


def filter_by_length(ds: datasets.Dataset, tokenizer, max_prompt_length: int, max_response_length: int):
    """Keep rows whose prompt / both responses fit; a limit <= 0 is no limit. No special tokens counted."""

    def fits(text: str, limit: int) -> bool:
        return limit <= 0 or len(tokenizer.encode(text, add_special_tokens=False)) <= limit

    return ds.filter(
        lambda p, c, r: fits(p, max_prompt_length) and fits(c, max_response_length) and fits(r, max_response_length),
        input_columns=["prompt", "chosen", "rejected"],
        keep_in_memory=True,
    )


def drop_translate_prompts(ds: datasets.Dataset) -> datasets.Dataset:
    return ds.filter(
        lambda p: "translate" not in p.lower() and "translation" not in p.lower(),
        input_columns="prompt",
        keep_in_memory=True,
    )


def random_subset(ds: datasets.Dataset, n: int, generator: torch.Generator) -> datasets.Dataset:
    """The reference's step 4: always one randperm, then its first n (n <= 0: all) rows."""
    import torch

    perm = torch.randperm(len(ds), generator=generator)
    keep = len(ds) if n <= 0 else min(n, len(ds))
    return ds.select(perm[:keep].tolist())


def _auto_tokenizer(name: str):
    from transformers import AutoTokenizer  # slow import, only when a length filter is asked for

    return AutoTokenizer.from_pretrained(name)


def _log_counts(stage: str, train: datasets.Dataset, test: datasets.Dataset) -> None:
    log.info("%-28s train %6d  test %6d", stage, len(train), len(test))
    for split, ds in (("train", train), ("test", test)):
        if len(ds) == 0:
            log.warning("split %s is empty after %s", split, stage)


def build_dataset(
    spec: dict, load_tokenizer: Callable | None = None, data_dir: str = "data_files"
) -> datasets.DatasetDict:
    """Run the pipeline in memory. Only a `rewritten` recipe writes files: its base and the rewrite
    (with its resume state) under data_dir."""
    import datasets
    import torch

    from rm_exps.data.hamiltonian import SPECIAL_TOKENS

    name, r = parse_recipe(spec)
    generator = torch.Generator().manual_seed(r.seed)
    train, test = _loaders()[name](r, generator, data_dir, load_tokenizer)
    _log_counts(f"{name} loaded", train, test)
    if r.tokenizer_for_length_filtering:
        tokenizer = (load_tokenizer or _auto_tokenizer)(r.tokenizer_for_length_filtering)
        if name == "hamiltonian_cycle":
            tokenizer.add_tokens(list(SPECIAL_TOKENS))  # count <sep> as one token, as training will
        train, test = (
            filter_by_length(ds, tokenizer, r.max_prompt_length, r.max_response_length) for ds in (train, test)
        )
        _log_counts("after length filter", train, test)
    if r.filter_out_translate_prompts:
        train, test = drop_translate_prompts(train), drop_translate_prompts(test)
        _log_counts("after translate filter", train, test)
    train = random_subset(train, r.num_train_samples, generator)
    test = random_subset(test, r.num_test_samples, generator)
    _log_counts("final", train, test)
    return datasets.DatasetDict({"train": train, "test": test})


def prepare_dataset(spec: dict, data_dir: str = "data_files", load_tokenizer: Callable | None = None) -> Path:
    """The prepared folder for `spec`, built if it is not already in data_dir.

    load_tokenizer(name) -> tokenizer lets the harness resolve tokenizer_for_length_filtering its own
    way (default: transformers AutoTokenizer.from_pretrained); it must return a fresh tokenizer,
    since Hamiltonian-cycle tokens are added to it.
    """
    quiet_library_output()
    config = run_config(spec)
    folder = Path(data_dir) / recipe_folder_name(spec)
    if is_saved(folder, config):
        log.info("reusing prepared dataset %s", folder)
        return folder
    if folder.exists():
        raise DatasetError(
            f"{folder} exists but does not hold this spec's dataset "
            f"(run_config.json missing or different); delete it to rebuild"
        )
    save_atomically(build_dataset(spec, load_tokenizer, data_dir), folder, config)
    log.info("saved %s", folder)
    return folder
