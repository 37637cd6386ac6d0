"""The reward agent: route an instruction, run the chosen verifiers, combine with RM scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rm_exps.agentic.client import ChatClient, LLMError
from rm_exps.agentic.config import VERIFIERS, AgentConfig
from rm_exps.agentic.constraints import InstructionFollowingVerifier
from rm_exps.agentic.factuality import EvidenceSource, FactualityVerifier, NoEvidence
from rm_exps.agentic.judger import Judgement, LLMJudger, combine
from rm_exps.agentic.router import Router
from rm_exps.agentic.signals import Signal


@dataclass
class Verification:
    """The verifiers' view of one instruction's candidates (index-aligned)."""

    routed: list[str]  # verifiers that ran
    signals: list[Signal]
    errors: list[str] = field(default_factory=list)  # routing problems (the signals carry their own)
    instruction: str = ""  # what was verified: the llm judger shows it to the judge model
    candidates: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "routed": self.routed,
            "errors": self.errors,
            "signals": {s.name: {"scores": s.scores, "details": s.details, "errors": s.errors} for s in self.signals},
        }


class RewardAgent:
    def __init__(
        self, config: AgentConfig, clients: dict[str, ChatClient] | None = None, evidence: EvidenceSource | None = None
    ):
        self.config = config
        self.clients = clients or config.clients()
        self.router = Router(self.clients["router"], config.verifiers)
        if evidence is None and config.evidence == "none":
            evidence = NoEvidence()
        self.verifiers = {
            "instruction_following": InstructionFollowingVerifier(
                self.clients["constraint_analyzer"],
                self.clients["coder"],
                config.sandbox.limits(),
                config.max_checkers,
                config.verify_gate,
                config.repair_rounds,
            ),
            "factuality": FactualityVerifier(
                self.clients["fact_checker"],
                evidence,
                config.fact_pairs,
                config.fact_rounds,
                config.max_queries,
                config.prefer_shorter,
                config.workers,
            ),
        }
        j = config.judger
        self.llm_judger = LLMJudger(self.clients["judge"], j.seed, j.normalization) if j.type == "llm" else None

    def verify(
        self, instruction: str, candidates: Sequence[str], verifiers: Sequence[str] | None = None
    ) -> Verification:
        """Run `verifiers` (None: the router's choice; a routing failure runs them all and is reported)."""
        errors = []
        if verifiers is None:
            try:
                chosen = self.router.route(instruction)
            except LLMError as e:
                errors.append(f"routing failed, running every verifier: {e}")
                chosen = set(VERIFIERS)
        else:
            chosen = set(verifiers)
        routed = [name for name in VERIFIERS if name in chosen]
        signals = [self.verifiers[name].score(instruction, list(candidates)) for name in routed]
        return Verification(routed, signals, errors, instruction, list(candidates))

    def judge(self, verification: Verification, rm_scores: Sequence[float] | None) -> Judgement:
        """The configured judger's pick; an llm judgement that failed has best None and an error."""
        j = self.config.judger
        if self.llm_judger is not None:
            return self.llm_judger.judge(
                verification.instruction, verification.candidates, verification.signals, rm_scores
            )
        return combine(rm_scores, verification.signals, j.rm_weight, j.weights, j.normalization)

    def rank(
        self,
        instruction: str,
        candidates: Sequence[str],
        rm_scores: Sequence[float] | None = None,
        verifiers: Sequence[str] | None = None,
    ) -> Judgement:
        """Verify and judge in one call; `.best` is the best-of-N choice (judger.select_best)."""
        return self.judge(self.verify(instruction, candidates, verifiers), rm_scores)
