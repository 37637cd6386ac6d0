"""The Hamiltonian-cycle generation check on a hand-made graph with a scripted policy."""

import torch
from accelerate import Accelerator
from torch import nn

from rm_exps.data.hamiltonian import SPECIAL_TOKENS
from rm_exps.eval.generation import left_padded
from rm_exps.eval.ham_cycle import HamCycleGenerationEvaluator
from rm_exps.models import load_tokenizer

# A square with one diagonal: 0-1-2-3 is a Hamiltonian cycle; 0-2-1-3 is not (no edge 1-3).
PROMPT = (
    "Vertices: <sep>0<sep>1<sep>2<sep>3\n"
    "Edges: <sep>0<edge_sep>1<sep>1<edge_sep>2<sep>2<edge_sep>3<sep>0<edge_sep>3<sep>0<edge_sep>2"
)


class ScriptedPolicy(nn.Module):
    """Answers prompts with scripted texts, in order, as `generate` would (prompt ids + new ids)."""

    def __init__(self, tokenizer, answers):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.tokenizer, self.answers, self.calls = tokenizer, list(answers), []

    def generate(self, input_ids, attention_mask, max_new_tokens, num_return_sequences, pad_token_id, **sampling):
        self.calls.append({"max_new_tokens": max_new_tokens, **sampling})
        rows = []
        for row in input_ids.repeat_interleave(num_return_sequences, 0):
            new = self.tokenizer(self.answers.pop(0) + self.tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            rows.append(row.tolist() + new)
        width = max(map(len, rows))
        return torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])


def evaluator(tokenizer, policy, tries=1):
    return HamCycleGenerationEvaluator(
        tokenizer,
        {"train": [PROMPT, PROMPT], "test": [PROMPT]},
        lambda m: policy,
        num_tries=tries,
        max_new_tokens=20,
        batch_size=2,
    )


def test_generation_accuracy_counts_valid_cycles_per_prompt():
    tokenizer = load_tokenizer("tiny-random-llama", extra_tokens=SPECIAL_TOKENS)
    answers = ["0<sep>1<sep>2<sep>3", "0<sep>2<sep>1<sep>3", "3<sep>2<sep>1<sep>0"]
    policy = ScriptedPolicy(tokenizer, answers)
    metrics = evaluator(tokenizer, policy).evaluate(policy, Accelerator(cpu=True))
    assert metrics == {"eval train ham cycle gen accuracy": 0.5, "eval test ham cycle gen accuracy": 1.0}
    # pure ancestral sampling: a model's own generation_config (Qwen2.5-Instruct: repetition_penalty 1.05) is overridden
    assert policy.calls[0] == {
        "max_new_tokens": 20,
        "do_sample": True,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "repetition_penalty": 1.0,
    }


def test_any_of_the_tries_solves_a_prompt():
    tokenizer = load_tokenizer("tiny-random-llama", extra_tokens=SPECIAL_TOKENS)
    # 2 tries per prompt: prompt 1 fails both, prompt 2 succeeds on its second try; test prompt: bad output
    answers = ["0<sep>2<sep>1<sep>3", "1<sep>1<sep>2<sep>3", "0<sep>0", "1<sep>2<sep>3<sep>0", "x", "0<sep>1<sep>2"]
    policy = ScriptedPolicy(tokenizer, answers)
    metrics = evaluator(tokenizer, policy, tries=2).evaluate(policy, Accelerator(cpu=True))
    assert metrics == {"eval train ham cycle gen accuracy": 0.5, "eval test ham cycle gen accuracy": 0.0}


def test_prompts_are_left_padded_for_generation():
    ids, mask = left_padded([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
