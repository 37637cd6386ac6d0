"""Settings of the reward agent: one JSON object, used by plans (`agentic` field) and the service.

Every key has a default; unknown keys are errors naming the closest valid key. Roles default to
`llm` and can override any of its fields, e.g. a coder model on another server:
    {"llm": {"model": "llama-3-8b", "base_url": "http://localhost:8001/v1"},
     "roles": {"coder": {"model": "qwen25-coder-7b", "base_url": "http://localhost:8002/v1"}}}
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from rm_exps.agentic.client import ChatClient, Endpoint, ResponseCache
from rm_exps.agentic.sandbox import DEFAULT_MODULES, SandboxLimits
from rm_exps.suggest import did_you_mean

ROLES = ("router", "fact_checker", "constraint_analyzer", "coder", "judge")
JUDGERS = ("weighted_sum", "llm")
VERIFIERS = ("instruction_following", "factuality")


class SandboxSettings(BaseModel):
    """Limits of the process that runs each generated checker (see rm_exps.agentic.sandbox)."""

    model_config = ConfigDict(extra="forbid")
    timeout: float = Field(5.0, gt=0, description="Wall-clock seconds per sandbox process.")
    cpu_seconds: int = Field(5, ge=1, description="CPU seconds per sandbox process.")
    memory_mb: int = Field(512, ge=64, description="Address-space limit in MiB.")
    file_size_kb: int = Field(64, ge=0, description="Largest file the process may write, in KiB.")
    max_processes: int = Field(64, ge=1, description="RLIMIT_NPROC of the sandbox user.")
    modules: list[str] = Field(list(DEFAULT_MODULES), description="Modules checker code may import.")
    allow_unsandboxed: bool = Field(
        False,
        description="UNSAFE for untrusted code: without bubblewrap, run checkers as plain processes "
        "(audit hook and rlimits only) instead of refusing.",
    )

    def limits(self) -> SandboxLimits:
        return SandboxLimits(
            timeout=self.timeout,
            cpu_seconds=self.cpu_seconds,
            memory_mb=self.memory_mb,
            file_size_kb=self.file_size_kb,
            max_processes=self.max_processes,
            modules=tuple(self.modules),
            allow_unsandboxed=self.allow_unsandboxed,
        )


class JudgerSettings(BaseModel):
    """weighted_sum: score = rm_weight * normalize(r_RM) + sum_i weights[i] * signal_i; llm: the judge
    role picks from pairs (knockout for more than two). See rm_exps.agentic.judger."""

    model_config = ConfigDict(extra="forbid")
    type: str = Field(
        "weighted_sum", description="weighted_sum, or llm (the judge role compares pairs; rm_weight/weights unused)."
    )
    seed: int = Field(0, description="llm: seeds which candidate of each pair is shown as Answer A.")
    rm_weight: float = Field(1.0, description="lambda: weight of the (normalized) reward-model score.")
    weights: dict[str, float] = Field({v: 1.0 for v in VERIFIERS}, description="Weight of each verifier signal.")
    normalization: Literal["none", "zscore", "minmax"] = Field(
        "none", description="Per-instruction normalization of the RM scores over the candidates."
    )

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in JUDGERS:
            raise ValueError(
                f"unknown judger type '{value}'{did_you_mean(value, JUDGERS)}; types: {', '.join(JUDGERS)}"
            )
        return value

    @field_validator("weights")
    @classmethod
    def _known_verifiers(cls, weights: dict[str, float]) -> dict[str, float]:
        for name in weights:
            if name not in VERIFIERS:
                raise ValueError(f"unknown verifier '{name}' in weights{did_you_mean(name, VERIFIERS)}")
        return {**{v: 1.0 for v in VERIFIERS}, **weights}


class AgentConfig(BaseModel):
    """The reward agent: LLM roles, routing, verifiers, sandbox and judger."""

    model_config = ConfigDict(extra="forbid")
    llm: Endpoint = Field(default_factory=Endpoint, description="Default endpoint of every role.")
    roles: dict[str, dict[str, Any]] = Field(
        {}, description=f"Per-role overrides of llm fields; roles: {', '.join(ROLES)}."
    )
    cache_dir: str | None = Field("~/.cache/rm_exps/llm", description="On-disk reply cache; null: no cache.")
    verifiers: list[str] | None = Field(
        None, description="null: the router decides; a list forces exactly these verifiers (no router call)."
    )
    max_checkers: int = Field(
        8, ge=1, description="Instruction following: at most this many constraints per instruction."
    )
    verify_gate: bool = Field(
        True, description="Ask whether each constraint is checkable by code before writing a checker."
    )
    repair_rounds: int = Field(2, ge=0, description="Rounds of fixing a checker that fails its dry run.")
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings, description="Checker sandbox limits.")
    fact_pairs: Literal["all", "round_robin"] = Field(
        "all", description="Factuality: compare all pairs, or each candidate with its next fact_rounds neighbours."
    )
    fact_rounds: int = Field(1, ge=1, description="Factuality round_robin: neighbours per candidate.")
    max_queries: int = Field(3, ge=1, description="Factuality: evidence queries per contradiction.")
    evidence: Literal["llm", "none"] = Field(
        "llm",
        description="Factuality evidence: the fact checker's own knowledge, or none (a search backend is set in code).",
    )
    prefer_shorter: bool = Field(
        False,
        description=(
            "Factuality: tell the verifier to favour the shorter answer when equally accurate (the reference's rule)."
        ),
    )
    judger: JudgerSettings = Field(default_factory=JudgerSettings, description="How signals are combined.")
    workers: int = Field(4, ge=1, description="Instructions verified in parallel.")

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, roles: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for role, override in roles.items():
            if role not in ROLES:
                raise ValueError(f"unknown role '{role}'{did_you_mean(role, ROLES)}; roles: {', '.join(ROLES)}")
            for key in override:
                if key not in Endpoint.model_fields:
                    raise ValueError(f"roles.{role}: unknown key '{key}'{did_you_mean(key, Endpoint.model_fields)}")
        return roles

    @field_validator("verifiers")
    @classmethod
    def _known_verifier_names(cls, names: list[str] | None) -> list[str] | None:
        for name in names or []:
            if name not in VERIFIERS:
                raise ValueError(
                    f"unknown verifier '{name}'{did_you_mean(name, VERIFIERS)}; known: {', '.join(VERIFIERS)}"
                )
        return names

    def endpoint(self, role: str) -> Endpoint:
        return self.llm.model_copy(update=self.roles.get(role, {}))

    def clients(self) -> dict[str, ChatClient]:
        cache = ResponseCache(Path(self.cache_dir)) if self.cache_dir else None
        return {role: ChatClient(role, self.endpoint(role), cache) for role in ROLES}


class AgenticEvalConfig(AgentConfig):
    """The `agentic` field of a run: the agent plus the evaluation data."""

    data: str = Field(
        ...,
        description=(
            "JSON/JSONL of {instruction, candidates, label[, id, subset]} or {prompt, chosen, rejected[, id, subset]}."
        ),
    )
    num_samples: int = Field(-1, description="Items evaluated (the first n); <=0: all.")
    seed: int = Field(0, description="Seeds the per-item placement of the candidates.")
    _given: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_given(cls, value: Any, handler: Any) -> AgenticEvalConfig:
        config = handler(value)
        if isinstance(value, dict):
            config._given = copy.deepcopy(value)
        return config

    def as_given(self) -> dict[str, Any]:
        """The settings as the plan wrote them: what a run's config.json records and its config hash
        covers (defaults are not spelled out, so a setting added later changes no hash)."""
        return copy.deepcopy(self._given) if self._given else self.model_dump(exclude_unset=True)


def config_errors(model: type[BaseModel], value: Any, where: str) -> list[str]:
    """Readable problems of `value` as `model` (unknown keys name the closest valid one)."""
    try:
        model.model_validate(value)
    except ValidationError as err:
        return [describe_error(model, e, where) for e in err.errors()]
    return []


def describe_error(model: type[BaseModel], error: Any, where: str) -> str:
    """One pydantic error of a value of `model` given at `where`, e.g. 'agentic.llm: unknown key ...'."""
    loc = [str(p) for p in error["loc"]]
    path = ".".join([where, *loc])
    if error["type"] == "extra_forbidden":
        parent: Any = model
        for part in loc[:-1]:
            parent = getattr(parent.model_fields.get(part), "annotation", None)
        fields = getattr(parent, "model_fields", {})
        return f"{path}: unknown key{did_you_mean(loc[-1], fields)}"
    return f"{path}: {error['msg'].removeprefix('Value error, ')}"


def agentic_eval_errors(value: dict[str, Any] | AgenticEvalConfig) -> list[str]:
    """Plan-time problems of a run's `agentic` settings: schema (when given as a dict; a run's config
    has validated them), data file, API keys of the roles in use."""
    if not isinstance(value, AgenticEvalConfig):
        errors = config_errors(AgenticEvalConfig, value, "agentic")
        if errors:
            return errors
    config = value if isinstance(value, AgenticEvalConfig) else AgenticEvalConfig.model_validate(value)
    from rm_exps.agentic.items import AgenticDataError, load_items

    errors = []
    try:
        load_items(config.data)
    except AgenticDataError as e:
        errors.append(f"agentic.data: {e}")
    used = {"router"} if config.verifiers is None else set()
    names = VERIFIERS if config.verifiers is None else config.verifiers
    used |= {"constraint_analyzer", "coder"} if "instruction_following" in names else set()
    used |= {"fact_checker"} if "factuality" in names else set()
    used |= {"judge"} if config.judger.type == "llm" else set()
    if used:
        missing = sorted(
            {config.endpoint(r).api_key_env for r in used if not os.environ.get(config.endpoint(r).api_key_env)}
        )
        errors += [f"agentic: set {env} (the API key of the verifier/judge models)" for env in missing]
    return errors
