"""Plans: load a JSON plan, expand its grid into runs, and validate every run before any compute.

The format is the reference harness's (see docs/ARCHITECTURE.md): for each configuration, the
cartesian product of `options` (last key fastest) is laid over `base_config` after the command-line
overrides; every string field is then formatted with the config (`"{model}_{objective}"`) and
`experiment_name` is sanitized. `skip` drops the first expanded runs; `repetitions` repeats each,
varying what `repetition_varies` names (`repetition_config`).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rm_exps.config import (
    ALIASES,
    FIELD_NAMES,
    FLAT_NAMES,
    SECTION_FLAT_NAMES,
    SECTIONS,
    RunConfig,
    config_rule_errors,
    derive_seed,
)
from rm_exps.outputs import BEST_OF_N_DIR, DPO_PAIRS_DIR, MODEL_DIR
from rm_exps.suggest import did_you_mean
from rm_exps.trackers import tracker_errors

log = logging.getLogger("rm_exps.plan")

PLAN_DEFAULTS: dict[str, Any] = {
    "name": "",
    "description": "",
    "skip": 0,
    "repetitions": 1,
    "repetition_varies": ["seed"],
    "largest": True,
    "multiprocess": False,
    "num_parallel": 1,
    "gpu_ids_pool": [],
    "slurm": {},
    "configurations": None,
}


class PlanError(Exception):
    """All problems found in a plan, reported together."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


@dataclass
class RunSpec:
    """One run of a plan: its resolved config and where it writes."""

    config: RunConfig
    index: int  # 1-based position in the sweep
    repetition: int  # 1-based
    run_dir: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    dependencies: list[Path] = field(default_factory=list)  # run folders of the runs it reads ('run:<name>')

    @property
    def name(self) -> str:
        return self.run_dir.name


# Names people reach for (other tools' names, common typos' targets) that difflib would not connect
# to the field they mean; rm_exps.suggest matches a key against these too ('learnig_rate' -> 'lr').
HINTS = {
    "learning_rate": "lr",
    "learningrate": "lr",
    "lr_rate": "lr",
    "seed": "random_seed",
    "num_epochs": "epochs",
    "num_train_epochs": "epochs",
    "dataset": "dataset_path",
    "dataset_name": "dataset_path",
    "train_file": "dataset_path",
    "data_path": "dataset_path",
    "model_name": "model",
    "model_name_or_path": "model",
    "model_path": "model",
    "beta": "kl_coeff",
    "output_dir": "outputs_dir",
    "per_device_train_batch_size": "batch_size",
    "train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "loss": "objective",
    "loss_type": "objective",
    "max_seq_length": "max_length",
    "max_len": "max_length",
    "gradient_accumulation": "gradient_accumulation_steps",
    "grad_accum": "gradient_accumulation_steps",
    "lr_scheduler": "lr_scheduler_type",
    "scheduler": "lr_scheduler_type",
    "warmup": "warmup_steps",
    "clip_grad_norm": "max_grad_norm",
    "bf16": "use_bf16",
    "mixed_precision": "precision",
    "eval_epochs": "validate_every",
    "lora_rank": "lora_r",
    # the ICRM reference's option names
    "weight_ratio": "sft_grad_scale",
    "temp_ratio": "generator_temperature",
    "pref_beta": "kl_coeff",
    "ref_model": "generator",
    "policy": "bon_policy",
}


RUN_REF = "run:"
# Fields that may name another run of the plan as 'run:<experiment_name>', and what they read from it.
RUN_REF_FIELDS = {
    "model": MODEL_DIR,
    "generator": MODEL_DIR,
    "bon_policy": MODEL_DIR,
    "judge_model": MODEL_DIR,
    "dataset_path": DPO_PAIRS_DIR,
    "bon_reference": BEST_OF_N_DIR,
}


def is_run_ref(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(RUN_REF)


def closest(key: str, candidates: Any) -> str:
    """' (did you mean ...?)' for an unknown key: rm_exps.suggest with the field hints."""
    return did_you_mean(key, list(candidates), HINTS)


def sanitize_name(name: str) -> str:
    """The reference's run-name sanitizing: '.', ',', '/' become '-'; brackets and spaces go."""
    for ch in ".,/":
        name = name.replace(ch, "-")
    for ch in "[] ":
        name = name.replace(ch, "")
    return name


def parse_override_value(text: str) -> Any:
    """`--set lr=1e-5` values: JSON when it parses (numbers, booleans, lists), else the string."""
    lowered = text.strip()
    if lowered in ("True", "False"):  # the reference's spelling of booleans
        return lowered == "True"
    try:
        return json.loads(lowered)
    except json.JSONDecodeError:
        return text


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings (dots nest into dict fields, e.g. dataset_path.num_vertices=8)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise PlanError([f"override '{pair}' is not of the form key=value"])
        key, value = pair.split("=", 1)
        out[key.strip().lstrip("-")] = parse_override_value(value)
    return out


def _field_annotation(key: str) -> Any:
    """The type of the field a flat, aliased or `section.field` key names (None if it names none)."""
    head, _, rest = key.partition(".")
    head = ALIASES.get(head, head)
    if head in FLAT_NAMES and not rest:
        section, name = FLAT_NAMES[head]
        return SECTIONS[section].model_fields[name].annotation
    if head in SECTIONS and rest in SECTIONS[head].model_fields:
        return SECTIONS[head].model_fields[rest].annotation
    field_info = RunConfig.model_fields.get(head)
    return None if field_info is None or rest else field_info.annotation


def _drop_other_spelling(config: dict[str, Any], key: str) -> None:
    """Setting a sectioned field by one spelling (`lora_r`, `lora.r`) replaces what the config gave by the other."""
    if key in FLAT_NAMES:
        section, name = FLAT_NAMES[key]
        if isinstance(config.get(section), dict):
            config[section].pop(name, None)
    else:
        section, _, name = key.partition(".")
        config.pop(SECTION_FLAT_NAMES.get((section, name), ""), None)


def _apply_override(config: dict[str, Any], key: str, value: Any) -> None:
    """`--set` one key: a flat name or a dotted path (a section's field, or a key inside a dict field)."""
    _drop_other_spelling(config, key)
    is_list = "list" in str(_field_annotation(key))
    _set_path(config, key, value.split(",") if is_list and isinstance(value, str) else value)


def _set_path(config: dict[str, Any], key: str, value: Any) -> None:
    head, *rest = key.split(".")
    if not rest:
        config[head] = value
        return
    if not isinstance(config.get(head), dict):
        config[head] = {}
    _set_path(config[head], ".".join(rest), value)


def _template_fields(template: str) -> list[str]:
    """The replacement fields of a str.format template (format specs included); ValueError if malformed."""
    names = []
    for _, name, spec, _ in string.Formatter().parse(template):
        if name is not None:
            names.append(name)
        if spec and "{" in spec:
            names += _template_fields(spec)
    return names


def format_strings(config: dict[str, Any]) -> dict[str, Any]:
    """One non-recursive pass of str.format(**config) over every string field, as the reference.
    Only plain `{field}` names (with an optional conversion and format spec) are allowed: attribute,
    index and positional access (`{objective.__class__}`, `{bon_n[0]}`, `{}`) are refused."""
    out = dict(config)
    for key, value in config.items():
        if isinstance(value, str) and "{" in value:
            try:
                bad = [name for name in _template_fields(value) if not name.isidentifier()]
            except ValueError:
                bad = []  # reported by format below
            if bad:
                raise PlanError(
                    [
                        f"field '{key}': template {value!r} uses {{{bad[0]}}}: a template names plain "
                        "fields only, e.g. '{model}_{lr}' (no attribute, index or positional access)"
                    ]
                )
            try:
                out[key] = value.format(**config)
            except KeyError as e:
                raise PlanError(
                    [
                        f"field '{key}': template {value!r} names unknown field {e.args[0]!r}"
                        f"{closest(str(e.args[0]), config)}"
                    ]
                ) from None
            except (ValueError, IndexError) as e:
                raise PlanError(
                    [f"field '{key}': bad template {value!r} ({e}); write literal braces as '{{{{' '}}}}'"]
                ) from None
    if "experiment_name" in out:
        out["experiment_name"] = sanitize_name(str(out["experiment_name"]))
        if not out["experiment_name"].strip():
            raise PlanError(
                [
                    f"experiment_name {config['experiment_name']!r} is empty once sanitized "
                    f"({out['experiment_name']!r}): the run would write into its outputs_dir itself; "
                    "give it letters or digits"
                ]
            )
    return out


def expand_configs(plan: dict[str, Any], overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The plan's raw run configs, in the reference's order (before skip and repetitions)."""
    configs = []
    for entry in plan["configurations"]:
        base, options = entry.get("base_config", {}), entry.get("options") or {}
        for values in itertools.product(*options.values()):
            config = copy.deepcopy(base)
            for key, value in (overrides or {}).items():
                _apply_override(config, key, value)
            for key, value in zip(options.keys(), values):
                _drop_other_spelling(config, key)
                config[key] = value
            configs.append(config)
    return configs


def _structure_errors(plan: Any) -> list[str]:
    if not isinstance(plan, dict):
        return ["a plan is a JSON object with a 'configurations' list"]
    errors = [f"unknown plan key '{k}'{closest(k, PLAN_DEFAULTS)}" for k in plan if k not in PLAN_DEFAULTS]
    confs = plan.get("configurations")
    if not isinstance(confs, list) or not confs:
        errors.append("'configurations' must be a non-empty list of {base_config, options}")
        return errors
    for i, entry in enumerate(confs):
        where = f"configurations[{i}]"
        if not isinstance(entry, dict):
            errors.append(f"{where} must be an object with 'base_config' and 'options'")
            continue
        errors += [
            f"{where}: unknown key '{k}'{closest(k, ('base_config', 'options'))}"
            for k in entry
            if k not in ("base_config", "options")
        ]
        if not isinstance(entry.get("base_config", {}), dict):
            errors.append(f"{where}.base_config must be an object")
        options = entry.get("options") or {}
        if not isinstance(options, dict):
            errors.append(f"{where}.options must be an object of lists")
            continue
        errors += [
            f"{where}.options['{k}'] must be a non-empty list"
            for k, v in options.items()
            if not isinstance(v, list) or not v
        ]
    for key, kind in (
        ("skip", int),
        ("repetitions", int),
        ("num_parallel", int),
        ("multiprocess", bool),
        ("largest", bool),
        ("gpu_ids_pool", list),
        ("slurm", dict),
    ):
        if key in plan and (not isinstance(plan[key], kind) or (kind is int and isinstance(plan[key], bool))):
            errors.append(f"plan key '{key}' must be {kind.__name__}, got {plan[key]!r}")
    varies = plan.get("repetition_varies", ["seed"])
    if not isinstance(varies, list) or not varies or not set(map(str, varies)) <= set(REPETITION_VARIES):
        errors.append(
            f"plan key 'repetition_varies' must be a non-empty list of {', '.join(map(repr, REPETITION_VARIES))} "
            f"(what differs between repetitions: the training seed, the data subsample), got {varies!r}"
        )
    for key, least, meaning in (
        ("skip", 0, "the number of expanded runs to leave out, from the first"),
        ("repetitions", 1, "how many times each run is repeated"),
        ("num_parallel", 1, "runs at a time"),
    ):
        value = plan.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < least:
            errors.append(f"plan key '{key}' must be at least {least} ({meaning}), got {value}")
    return errors


def _given_as(loc: tuple[Any, ...], values: dict[str, Any]) -> str:
    """Where a validation error is, named as the plan gave it: a flat name (`lora_r`), an alias, or a
    dotted path (`lora.r`); '' for the run as a whole."""
    if not loc:
        return ""
    head, *rest = (str(p) for p in loc)
    flat = SECTION_FLAT_NAMES.get((head, rest[0])) if rest else None
    if flat is not None and flat in values:
        return ".".join([flat, *rest[1:]])
    alias = next((a for a, name in ALIASES.items() if name == head and a in values and name not in values), None)
    return ".".join([alias or head, *rest])


def _pydantic_errors(err: ValidationError, values: dict[str, Any]) -> list[str]:
    from rm_exps.agentic.config import AgenticEvalConfig, describe_error

    out = []
    for e in err.errors():
        loc = _given_as(e["loc"], values)
        if e["loc"] and e["loc"][0] == "agentic":  # said as the agent's own settings check says it
            out.append(describe_error(AgenticEvalConfig, {**e, "loc": e["loc"][1:]}, "agentic"))
        elif e["type"] == "extra_forbidden":
            out.append(f"unknown field '{loc}'{closest(loc, FIELD_NAMES)}")
        elif loc:
            out.append(f"field '{loc}': {e['msg']} (got {e.get('input')!r})")
        else:
            out.append(e["msg"].removeprefix("Value error, "))
    return out


def validate_run(values: dict[str, Any]) -> tuple[RunConfig | None, list[str], set[str]]:
    """A run's config, its type errors, and the flat names of the fields that failed them. With type
    errors the config holds the values that did validate (the failed ones at their defaults), so the
    rules and checks still run on the rest; None when no such config can be built."""
    try:
        return RunConfig.model_validate(values), [], set()
    except ValidationError as e:
        error = e
    messages = _pydantic_errors(error, values)
    remaining, failed = copy.deepcopy(values), set()
    for _ in range(3):  # a failed value can hide another's error (a union, a section's type): retry a few times
        locs = [tuple(str(p) for p in e["loc"]) for e in error.errors()]
        if any(not loc for loc in locs):
            return None, messages, failed
        for loc in locs:
            failed.add(_drop(remaining, loc))
        try:
            return RunConfig.model_validate(remaining), messages, failed
        except ValidationError as e:
            error = e
    return None, messages, failed


def _drop(values: dict[str, Any], loc: tuple[str, ...]) -> str:
    """Remove the value a validation error is about (in either spelling); its flat name."""
    head = loc[0]
    if head in SECTIONS and len(loc) > 1:
        flat = SECTION_FLAT_NAMES.get((head, loc[1]), f"{head}.{loc[1]}")
        if isinstance(values.get(head), dict):
            values[head].pop(loc[1], None)
        values.pop(flat, None)
        return flat
    for name in (head, *[a for a, target in ALIASES.items() if target == head]):
        values.pop(name, None)
    return head


def _dataset_errors(source: Any, what: str, data_dir: str, splits: tuple[str, ...]) -> list[str]:
    """A recipe's options (it is prepared by the run), or a local dataset's layout, `splits` and rows
    (data.checks: metadata, and JSON rows up to its scan bound)."""
    from rm_exps.data.checks import dataset_problems
    from rm_exps.data.prepare import api_credentials_error, validate_recipe

    if source is None:
        return [f"{what} is required"]
    if isinstance(source, dict):
        problem = validate_recipe(source) or api_credentials_error(source, str(data_dir))
        return [f"{what}: {problem}"] if problem else []
    return [f"{what}: {problem}" for problem in dataset_problems(source, splits)]


def model_folder_key(path: str | Path) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(str(path))))


def io_errors(
    config: RunConfig, produced_models: frozenset[str] = frozenset(), failed: frozenset[str] = frozenset()
) -> list[str]:
    """What a run's config names that must exist or be usable: datasets (files, recipes, their rows),
    model names, trackers' packages, the agentic data and API keys. No compute. `produced_models` are the
    `model/` folders earlier runs of the plan will save (a later stage may load them); `failed`: flat
    names of fields whose values did not validate (their defaults are not checked)."""
    from rm_exps.models import check_model_name

    errors = []
    dataset = config.dataset_path
    if config.is_persona:  # Persona: a records file, or null for the hub
        if isinstance(dataset, str) and not Path(dataset).is_file():
            errors.append(f"dataset_path: persona records file not found: {dataset}")
    elif not is_run_ref(dataset) and "dataset_path" not in failed:  # another run's output: checked when linked
        problems = _dataset_errors(dataset, "dataset_path", config.data_files_dir, ("train", "test"))
        errors += problems or _dpo_prompts_errors(config)
    errors += [
        e
        for name, path, split in zip(
            config.evaluation_datasets_names, config.evaluation_datasets_paths, config.evaluation_datasets_splits
        )
        for e in _dataset_errors(path, f"evaluation dataset '{name}'", config.data_files_dir, (split,))
    ]
    errors += tracker_errors(config.tracking.wandb, config.tracking.tensorboard)
    if config.agentic is not None:
        from rm_exps.agentic.config import agentic_eval_errors

        errors += agentic_eval_errors(config.agentic)
    for key in ("model", "generator", "bon_policy", "judge_model"):
        owner, name = config.owner(key)
        model = getattr(owner, name)
        if (
            model is not None
            and key not in failed
            and not is_run_ref(model)
            and model_folder_key(model) not in produced_models
            and (problem := check_model_name(model)) is not None
        ):
            errors.append(f"{key}: {problem}")
    return errors


def no_dpo_prompts_message(
    requested: int,
    num_train_samples: int,
    train_rows: int | None,
    rm_rows: int | None,
    excluded: int | None,
    exclude_test: bool,
    at_most: bool = False,
) -> str:
    """Why a best-of-N run has no train prompt left to sample DPO pairs from, with the numbers: rows of
    the train split, rows the reward model trains on, prompts excluded, prompts requested (the plan
    check and the run say the same); a count that is None is not known (at plan time)."""
    rows = "an unknown number of" if train_rows is None else f"{'at most ' if at_most else ''}{train_rows}"
    trained = (
        "all"
        if rm_rows is None or (at_most and rm_rows == train_rows)
        else f"all {rm_rows}"
        if rm_rows == train_rows
        else str(rm_rows)
    )
    test = " and the test prompts" if exclude_test else ""
    dropped = (
        f"the prompts of all its training rows{test}"
        if excluded is None
        else f"{excluded} distinct prompts (its training prompts{test})"
    )
    return (
        f"dpo_pairs_num_prompts {requested}: no train prompt is left for DPO pairs: the train split has {rows} "
        f"rows, the reward model trains on {trained} of them (num_train_samples {num_train_samples}), and "
        f"{dropped} are excluded: 0 prompts remain, {requested if requested > 0 else 'all'} requested; train the "
        "reward model on a subset (num_train_samples below the train split's size) so that train prompts are left over"
    )


def _dpo_prompts_errors(config: RunConfig) -> list[str]:
    """DPO pairs come from train prompts the reward model was not trained on: none are left when it
    trains on the whole train split. The split's size comes from its metadata or its recipe (no data is
    loaded); a subset of a split of unknown size is checked when the run samples (same message)."""
    bon, n = config.best_of_n, config.num_train_samples
    if bon.dpo_pairs_num_prompts == 0 or bon.policy is None:
        return []
    from rm_exps.data.prepare import split_size

    rows, at_most = split_size(config.dataset_path, "train", config.data_files_dir)
    if n > 0 and (rows is None or n < rows):
        return []
    return [
        no_dpo_prompts_message(
            bon.dpo_pairs_num_prompts, n, rows, rows, None, bon.dpo_pairs_exclude_test_prompts, at_most
        )
    ]


def _warn_subset_larger_than_split(label: str, config: RunConfig) -> None:
    """num_train_samples above the train split's rows trains on all of them: said in the log (here, from
    the dataset's metadata, and again by the run's subsampling), not an error."""
    n, dataset = config.num_train_samples, config.dataset_path
    if n <= 0 or config.is_persona or not isinstance(dataset, str) or is_run_ref(dataset):
        return
    from rm_exps.data.checks import split_rows

    rows = split_rows(dataset, "train")
    if rows is not None and n > rows:
        log.warning(
            "%s: num_train_samples %d is more than the %d rows of %s [train]: all %d are used",
            label,
            n,
            rows,
            dataset,
            rows,
        )


def _artifact_problem(producer: RunConfig, artifact: str) -> str | None:
    if artifact == MODEL_DIR and not producer.save_model:
        return "it must set save_model: true"
    if artifact in (BEST_OF_N_DIR, DPO_PAIRS_DIR) and producer.best_of_n.policy is None:
        return "it must run best-of-N (set bon_policy)"
    if artifact == DPO_PAIRS_DIR and producer.best_of_n.dpo_pairs_num_prompts == 0:
        return "it must write DPO pairs (set dpo_pairs_num_prompts)"
    return None


def link_runs(runs: list[RunSpec], invalid: frozenset[str] = frozenset()) -> tuple[list[str], list[RunSpec]]:
    """Resolve 'run:<experiment_name>' fields to the producing run's output folder (same
    repetition) and order the runs so that producers come first (otherwise in plan order).
    Returns the problems found (missing producers, producers that do not write what is read,
    cycles) and the ordered runs, renumbered. `invalid`: names of runs left out for their own
    problems (a reference to one is not reported as a missing run)."""
    by_name: dict[str, dict[int, RunSpec]] = {}
    for spec in runs:
        by_name.setdefault(spec.config.experiment_name, {})[spec.repetition] = spec
    errors: list[str] = []
    needs: dict[int, list[RunSpec]] = {id(spec): [] for spec in runs}
    for spec in runs:
        for key, artifact in RUN_REF_FIELDS.items():
            owner, name = spec.config.owner(key)
            value = getattr(owner, name)
            if not is_run_ref(value):
                continue
            target = value[len(RUN_REF) :]
            producer = by_name.get(target, {}).get(spec.repetition)
            where = f"run {spec.index} ({spec.name}): field '{key}' reads run '{target}'"
            if producer is None and target in invalid:
                errors.append(f"{where}, which is invalid (its problems are listed above)")
                continue
            if producer is None:
                errors.append(f"{where}, but the plan has no run of that name{closest(target, by_name)}")
                continue
            if (problem := _artifact_problem(producer.config, artifact)) is not None:
                errors.append(f"{where}: {problem}")
            needs[id(spec)].append(producer)
            spec.dependencies.append(producer.run_dir)
            setattr(owner, name, str(producer.run_dir / artifact))
    ordered: list[RunSpec] = []
    placed: set[int] = set()
    pending = list(runs)
    while pending:  # stable topological order: the first run whose producers are all placed
        ready = next((s for s in pending if all(id(p) in placed for p in needs[id(s)])), None)
        if ready is None:
            errors.append(f"runs read each other's outputs in a cycle: {' -> '.join(_cycle(pending, needs))}")
            ordered += pending
            break
        pending.remove(ready)
        ordered.append(ready)
        placed.add(id(ready))
    for i, spec in enumerate(ordered, start=1):
        spec.index = i
    return errors, ordered


def _cycle(pending: list[RunSpec], needs: dict[int, list[RunSpec]]) -> list[str]:
    """Names along one dependency cycle among runs that could not be ordered."""
    waiting = {id(s) for s in pending}
    path: list[RunSpec] = []
    spec = pending[0]
    while id(spec) not in {id(s) for s in path}:  # every pending run waits on a pending run: this loops back
        path.append(spec)
        spec = next(p for p in needs[id(spec)] if id(p) in waiting)
    start = next(i for i, s in enumerate(path) if s is spec)
    return [s.name for s in path[start:]] + [spec.name]


def load_plan(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PlanError([f"plan file not found: {path}"])
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PlanError(
            [f"{path}: not a JSON plan: byte {e.start} (0x{e.object[e.start]:02x}) is not UTF-8 text"]
        ) from None
    try:
        plan = json.loads(text)
    except json.JSONDecodeError as e:
        raise PlanError([f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"]) from None
    except RecursionError:
        raise PlanError([f"{path}: not a plan: its JSON is nested too deeply to read"]) from None
    if isinstance(plan, dict) and "configurations" not in plan and "experiment_name" in plan:
        # A run's config.json is a one-run plan: rerunning it reproduces the run.
        plan = {"configurations": [{"base_config": plan}]}
    return plan


REPETITION_VARIES = ("seed", "data")


def repetition_config(config: RunConfig, rep: int, varies: list[str]) -> RunConfig:
    """Repetition `rep` (1-based) of a run. `seed` varies the training seed (shuffle order, head
    initialization, dropout, sampling): `random_seed: -1` is derived from the run's name and `rep`,
    an explicit seed s becomes s + rep - 1. `data` varies the data subsample (train and test pairs,
    evaluation subsets): dataset_prep_random_seed + rep - 1, the same in every run of one repetition,
    so two settings compared within a repetition still see the same pairs. Repetition 1 is the run as
    written."""
    run_config = config.model_copy(deep=True)  # its own sections: linking sets their run references
    if config.random_seed == -1:
        run_config.random_seed = derive_seed(config.experiment_name, rep if "seed" in varies else 1)
    elif "seed" in varies:
        run_config.random_seed = config.random_seed + rep - 1
    if "data" in varies:
        run_config.dataset_prep_random_seed = config.dataset_prep_random_seed + rep - 1
    return run_config


def build_runs(plan: dict[str, Any], overrides: dict[str, Any] | None = None) -> list[RunSpec]:
    """Expand and validate a plan. Raises PlanError listing every problem of every run."""
    errors = _structure_errors(plan)
    if errors:
        raise PlanError(errors)
    plan = {**PLAN_DEFAULTS, **plan}
    runs: list[RunSpec] = []
    expanded = expand_configs(plan, overrides)
    if plan["skip"] >= len(expanded):
        raise PlanError(
            [f"plan key 'skip' is {plan['skip']} but the plan expands to {len(expanded)} run(s): no run would be left"]
        )
    raw_configs = expanded[plan["skip"] :]
    produced: set[str] = set()  # model/ folders of earlier runs that save their model (runs execute in order)
    invalid: set[str] = set()  # experiment names of runs with problems
    for i, raw in enumerate(raw_configs, start=1):
        try:
            formatted = format_strings(raw)
        except PlanError as e:
            errors += [f"run {i}: {msg}" for msg in e.errors]
            continue
        label = f"run {i} ({formatted.get('experiment_name', 'run')})"
        config, problems, failed = validate_run(formatted)
        if config is not None:
            problems += config_rule_errors(config) + io_errors(config, frozenset(produced), frozenset(failed))
        errors += [f"{label}: {msg}" for msg in problems]
        if problems or config is None:
            invalid.add(str(formatted.get("experiment_name")))
            continue
        _warn_subset_larger_than_split(label, config)
        if config.save_model and plan["repetitions"] == 1:
            produced.add(model_folder_key(Path(config.outputs_dir) / config.experiment_name / "model"))
        for rep in range(1, plan["repetitions"] + 1):
            run_config = repetition_config(config, rep, plan["repetition_varies"])
            folder = config.experiment_name + (f"__rep{rep}" if plan["repetitions"] > 1 else "")
            runs.append(RunSpec(run_config, len(runs) + 1, rep, Path(config.outputs_dir) / folder, overrides or {}))
    link_errors, runs = link_runs(runs, frozenset(invalid))
    errors += link_errors
    seen: dict[Path, int] = {}
    for run in runs:
        if run.run_dir in seen:
            errors.append(
                f"runs {seen[run.run_dir]} and {run.index} write to the same folder {run.run_dir}; "
                "make experiment_name depend on the fields that vary (e.g. '{model}_{objective}')"
            )
        seen.setdefault(run.run_dir, run.index)
    if errors:
        raise PlanError(errors)
    return runs
