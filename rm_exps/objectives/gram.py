"""GRAM (Wang et al., ICML 2025): a generative pairwise reward model trained in two stages.

Stage 1 (`gram_pretrain`) learns to generate both answers of an unlabeled pair in the A/B-tagged
layout; stage 2 (`gram_judge`) fine-tunes it to emit the verdict token `A` or `B`. Both answers
sit in one row (the "two_answers" and "judge" formats, defined here); the two rows of a pair in an
evaluation batch are its two presentation orders (chosen answer in slot A, then in slot B).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rm_exps.batching import (
    CHAT_TEMPLATE_KWARGS,
    OrderCollator,
    PairFormat,
    chat_prompt_and_response,
    model_inputs,
    register_format,
    render_chat,
    split_pair,
    token_ids,
    truncate_tokens,
)
from rm_exps.lazy import LazyModule
from rm_exps.objectives.base import Objective, register
from rm_exps.objectives.gen_rm import single_token_id

if TYPE_CHECKING:
    from torch import nn

torch = LazyModule("torch")
F = LazyModule("torch.nn.functional")
transformers = LazyModule("transformers")
metrics = LazyModule("rm_exps.eval.metrics")
models = LazyModule("rm_exps.models")
modules = LazyModule("rm_exps.objectives.modules")

# GRAM (README "Pre-Training" / "Fine-Tuning"; digest §1). One template for training and inference;
# `#Preferred:` has no trailing space (the README's training template).
GRAM_QUESTION = "[User Question]\n{prompt}\n\n"
GRAM_ANSWERS = (
    "[The Start of Assistant A's Answer]\n{a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{b}\n[The End of Assistant B's Answer]"
)
GRAM_JUDGE_INSTRUCTION = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to "
    "the user question displayed below. You should choose the assistant that follows the user's instructions and "
    "answers the user's question better.\n"
    "Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and "
    "level of detail of their responses. Avoid any position biases and ensure that the order in which the responses "
    "were presented does not influence your decision. Do not allow the length of the responses to influence your "
    "evaluation. Do not favor certain names of the assistants. Be as objective as possible.\n"
    'Please directly output your final verdict by strictly following this format: "A" if assistant A is better, '
    '"B" if assistant B is better.'
)
GRAM_JUDGE_TEMPLATE = GRAM_JUDGE_INSTRUCTION + "\n\n[User Question]\n{prompt}\n\n" + GRAM_ANSWERS + "\n\n#Preferred:"
VERDICT_TOKENS = ("A", "B")  # the assistant turn of the judge is exactly one of these tokens
# GRAM renderings also have no thinking block (Qwen3, as GRAM trains it); templates ignore variables they do not use.
GRAM_TEMPLATE_KWARGS = {"enable_thinking": False, **CHAT_TEMPLATE_KWARGS}


def judge_text(tokenizer: Any, prompt: str, a: str, b: str) -> str:
    """The GRAM judge prompt as one user turn with the generation prompt: the next token is the verdict."""
    user = [{"role": "user", "content": GRAM_JUDGE_TEMPLATE.format(prompt=prompt, a=a, b=b)}]
    return render_chat(tokenizer, user, add_generation_prompt=True, **GRAM_TEMPLATE_KWARGS)


def two_answers_text(tokenizer: Any, prompt: str, a: str, b: str) -> tuple[str, str]:
    """GRAM pre-training: (prompt text, target text); the target is both answers in the tagged layout
    plus the template's end-of-turn suffix."""
    return chat_prompt_and_response(
        tokenizer, GRAM_QUESTION.format(prompt=prompt), GRAM_ANSWERS.format(a=a, b=b), **GRAM_TEMPLATE_KWARGS
    )


def cut_answers(tokenizer: Any, example: dict[str, str], max_answer_tokens: int) -> tuple[str, str, str]:
    """(question, chosen, rejected), each answer cut to `max_answer_tokens` before templating (<= 0: uncut),
    so the tags and `#Preferred:` always survive."""
    chosen, rejected = (truncate_tokens(tokenizer, example[k], max_answer_tokens) for k in ("chosen", "rejected"))
    return example["prompt"], chosen, rejected


@register_format
class TwoAnswersFormat(PairFormat):
    """gram_pretrain: the question block as the user turn, both answers (A/B-tagged) as the assistant
    turn. The chosen row has the chosen answer in slot A, the rejected row has it in slot B."""

    name = "two_answers"

    def encode(self, tokenizer: Any, example: dict[str, str], max_answer_tokens: int = 0) -> dict[str, list[int]]:
        x, c, r = cut_answers(tokenizer, example, max_answer_tokens)
        prompt_text, first = two_answers_text(tokenizer, x, c, r)
        _, second = two_answers_text(tokenizer, x, r, c)
        return {
            "prompt_ids": token_ids(tokenizer, prompt_text),
            "chosen_ids": token_ids(tokenizer, first),
            "rejected_ids": token_ids(tokenizer, second),
        }


@register_format
class JudgeFormat(PairFormat):
    """gram_judge: the judge prompt with both answers as one user turn, ending at the verdict slot. The
    chosen row has the chosen answer in slot A, the rejected row has it in slot B."""

    name = "judge"

    def encode(self, tokenizer: Any, example: dict[str, str], max_answer_tokens: int = 0) -> dict[str, list[int]]:
        x, c, r = cut_answers(tokenizer, example, max_answer_tokens)
        return {
            "prompt_ids": [],
            "chosen_ids": token_ids(tokenizer, judge_text(tokenizer, x, c, r)),
            "rejected_ids": token_ids(tokenizer, judge_text(tokenizer, x, r, c)),
        }


def check_verdict_slot(tokenizer: Any, verdict_ids: list[int]) -> None:
    """Training reads the verdict where inference does: the judge prompt rendered with the generation
    prompt must be a token prefix of the conversation whose assistant turn is the verdict, and the
    next token must be the verdict id (catches templates that start the assistant turn differently,
    e.g. with a thinking block, or that merge the verdict into the previous token)."""
    prompt = tokenizer(judge_text(tokenizer, "q", "x", "y"), add_special_tokens=False)["input_ids"]
    for verdict, vid in zip(VERDICT_TOKENS, verdict_ids):
        conversation = [
            {"role": "user", "content": GRAM_JUDGE_TEMPLATE.format(prompt="q", a="x", b="y")},
            {"role": "assistant", "content": verdict},
        ]
        full_text = render_chat(tokenizer, conversation, **GRAM_TEMPLATE_KWARGS)
        full = tokenizer(full_text, add_special_tokens=False)["input_ids"]
        if full[: len(prompt) + 1] != prompt + [vid]:
            raise ValueError(
                f"gram_judge: with this chat template the assistant turn {verdict!r} does not start "
                f"right after the generation prompt as token {vid}; training and inference would "
                "read the verdict at different positions"
            )


class _Gram(Objective):
    def train_collator(self, pad_token_id: int) -> OrderCollator:
        return OrderCollator(pad_token_id, self.config.judge.order, self.config.random_seed)

    def _causal_lm(self) -> nn.Module:
        return models.load_model(
            self.config.model, transformers.AutoModelForCausalLM, self.tokenizer, **self.load_kwargs()
        )


@register
class GramPretrain(_Gram):
    """Stage 1: next-token training on an unlabeled pair. Prompt x = the user turn
    "[User Question]\\n{question}\\n\\n"; target y = "[The Start of Assistant A's Answer]\\n{a}\\n[The End of
    Assistant A's Answer]\\n\\n[The Start of Assistant B's Answer]\\n{b}\\n[The End of Assistant B's Answer]"
    plus the template's end-of-turn suffix. Labels are ignored: (a, b) is (chosen, rejected) or the
    reverse, one order per pair by a seeded coin (`judge_order: random`) or both (`both`).
    Loss: token-mean negative log-likelihood over the target tokens (of the micro-batch; the trainer
    weighs micro-batches by their target tokens, so a step is the mean over its accumulation window),

        L = -(sum_rows sum_{t in y} log pi(y_t | x, y_<t)) / (number of target tokens),

    the prompt masked. Evaluation: `loss` = -mean over rows (both orders) of the per-token
    log-probability of the target; it does not rank answers, so no accuracy is reported."""

    name = "gram_pretrain"
    input_format = TwoAnswersFormat.name
    ranks_pairs = False

    def build_model(self) -> nn.Module:
        return modules.SequenceLogProb(self._causal_lm())

    def loss(self, model, batch):
        logp = model(**model_inputs(batch))
        loss = -logp.sum() / self.loss_weight(batch)
        return loss, {"loss": loss.detach().float()}

    def loss_weight(self, batch):
        """The target tokens: an accumulated step is the token mean of its whole window, as the
        reference divides the summed NLL by every target token of the accumulation window."""
        return batch["response_mask"][:, 1:].sum()

    def scores(self, model, batch):
        """Per-token log-probability of each row's target."""
        return model(**model_inputs(batch)) / batch["response_mask"][:, 1:].sum(1)

    def eval_metrics(self, prefix, r_c, r_r, **extras):
        return {f"{prefix} loss": -torch.cat([r_c, r_r]).double().mean().item()}


@register
class GramJudge(_Gram):
    """Stage 2: the judge. The GRAM judge prompt (instruction, question, the answers in slots A and B,
    "#Preferred:") is one user turn; z = (z_A, z_B) are the logits of the tokens `A` and `B` at the
    position after the generation prompt, where the verdict is generated. With y = 0 when the better
    answer is in slot A and 1 when it is in slot B, and eps = `judge_label_smoothing`:

        L = mean_rows [ -(1 - eps/2) log softmax(z)_y - (eps/2) log softmax(z)_{1-y} ]
          = mean_rows [ -log sigmoid(d) + (eps/2) d ],  d = z_y - z_{1-y},

    a Bradley-Terry loss on the verdict margin plus a linear penalty (minimised at
    d = ln((2 - eps)/eps)), averaged over the rows of the micro-batch.

    Reward of a pair (x, y1, y2), scored in both orders:
        s(y1) = 1/2 [softmax(z^{y1,y2})_A + softmax(z^{y2,y1})_B],  s(y2) = 1 - s(y1).
    Evaluation: `loss` = -mean over both orders of log P(correct verdict); accuracy and rewards from s;
    plus `position consistency` (share of pairs whose verdict survives the swap) and
    `slot A rate` (share of verdicts, over both orders, that pick slot A)."""

    name = "gram_judge"
    input_format = JudgeFormat.name
    pairwise_only = True  # s(chosen) is a verdict on its pair

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.verdict_ids = [single_token_id(tokenizer, t) for t in VERDICT_TOKENS]
        check_verdict_slot(tokenizer, self.verdict_ids)

    def build_model(self) -> nn.Module:
        return modules.NextTokenLogProbs(self._causal_lm(), self.verdict_ids)

    def verdict_log_probs(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """log softmax over (z_A, z_B) per row, [R, 2]. (NextTokenLogProbs gives vocabulary log-probs; the
        two-way softmax of those equals the two-way softmax of the raw logits.)"""
        return F.log_softmax(model(**model_inputs(batch)).float(), dim=-1)

    def loss(self, model, batch):
        logp = self.verdict_log_probs(model, batch)
        half = logp.shape[0] // 2
        target = batch["order"] if "order" in batch else torch.arange(2, device=logp.device).repeat_interleave(half)
        loss = F.cross_entropy(logp, target, label_smoothing=self.config.judge.label_smoothing)
        correct = logp.gather(1, target[:, None]).squeeze(1)
        return loss, {
            "loss": loss.detach(),
            "accuracy": (correct > logp.gather(1, 1 - target[:, None]).squeeze(1)).float().mean(),
            "verdict prob": correct.detach().exp().mean(),
        }

    def order_probs(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """P(chosen wins) when it is shown in slot A, and when it is shown in slot B."""
        first, second = split_pair(self.verdict_log_probs(model, batch).exp())
        return first[:, 0], second[:, 1]

    def rewards(self, model, batch):
        p_first, p_second = self.order_probs(model, batch)
        s_chosen = (p_first + p_second) / 2
        return s_chosen, 1 - s_chosen

    def pair_outputs(self, model, batch):
        p_first, p_second = self.order_probs(model, batch)
        s_chosen = (p_first + p_second) / 2
        return {"chosen": s_chosen, "rejected": 1 - s_chosen, "p_first": p_first, "p_second": p_second}

    def preference_probability(self, r_a, r_b):
        return r_a  # s(a) is already P(a beats b); s(a) + s(b) = 1

    def eval_metrics(self, prefix, r_c, r_r, **extras):
        values = metrics.pairwise_metrics(prefix, r_c, r_r)
        if "p_first" in extras:
            p1, p2 = extras["p_first"].double(), extras["p_second"].double()
            values[f"{prefix} loss"] = -(p1.clamp_min(1e-12).log() + p2.clamp_min(1e-12).log()).mean().item() / 2
            values[f"{prefix} position consistency"] = ((p1 > 0.5) == (p2 > 0.5)).double().mean().item()
            values[f"{prefix} slot A rate"] = ((p1 > 0.5).double().mean() + (p2 < 0.5).double().mean()).item() / 2
        return values
