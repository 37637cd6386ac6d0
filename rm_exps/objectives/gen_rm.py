"""GEN-RM: a generative verifier that answers "Is the answer correct (Yes/No)?"."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rm_exps.batching import PairFormat, model_inputs, register_format, render_chat, split_pair, token_ids
from rm_exps.lazy import LazyModule
from rm_exps.objectives.base import Objective, register

if TYPE_CHECKING:
    from torch import nn

torch = LazyModule("torch")
transformers = LazyModule("transformers")
models = LazyModule("rm_exps.models")
modules = LazyModule("rm_exps.objectives.modules")

VERIFICATION_TEMPLATE = "Question: {prompt}\nAnswer: {response}\nVerification: Is the answer correct (Yes/No)?"


def single_token_id(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"gen_rm needs {text!r} to be one token of the model's vocabulary; it encodes to {ids}")
    return ids[0]


def verification_text(tokenizer: Any, prompt: str, response: str) -> str:
    user = [{"role": "user", "content": VERIFICATION_TEMPLATE.format(prompt=prompt, response=response)}]
    return render_chat(tokenizer, user, add_generation_prompt=True)


@register_format
class VerificationFormat(PairFormat):
    """One user turn asking whether the answer is correct, with the generation prompt; all of it is the
    row's response part (no separate prompt)."""

    name = "verification"

    def encode(self, tokenizer: Any, example: dict[str, str], max_answer_tokens: int = 0) -> dict[str, list[int]]:
        return {
            "prompt_ids": [],
            "chosen_ids": token_ids(tokenizer, verification_text(tokenizer, example["prompt"], example["chosen"])),
            "rejected_ids": token_ids(tokenizer, verification_text(tokenizer, example["prompt"], example["rejected"])),
        }


@register
class GenerativeRM(Objective):
    """The prompt "Question: {x}\\nAnswer: {y}\\nVerification: Is the answer correct (Yes/No)?" as one user
    turn; the next-token distribution after the generation prompt is read at the Yes and No ids.
    Loss: cross-entropy on Yes for the chosen response and No for the rejected one.
    Reward: p(Yes). (Its evaluation "loss" is the Bradley-Terry loss on p(Yes), as in the reference.)"""

    name = "gen_rm"
    input_format = VerificationFormat.name

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.yes_no_ids = [single_token_id(tokenizer, "Yes"), single_token_id(tokenizer, "No")]

    def build_model(self) -> nn.Module:
        causal_lm = models.load_model(
            self.config.model, transformers.AutoModelForCausalLM, self.tokenizer, **self.load_kwargs()
        )
        return modules.NextTokenLogProbs(causal_lm, self.yes_no_ids)

    def scores(self, model, batch):
        return model(**model_inputs(batch))[:, 0].exp()

    def loss(self, model, batch):
        logp = model(**model_inputs(batch))
        yes_c, _ = split_pair(logp[:, 0])
        _, no_r = split_pair(logp[:, 1])
        loss = -torch.cat([yes_c, no_r]).mean()
        return loss, self.train_metrics(loss, yes_c.exp(), split_pair(logp[:, 0].exp())[1])
