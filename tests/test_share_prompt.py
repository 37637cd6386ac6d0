"""share_prompt: one row per pair (prompt + chosen + rejected, 4-D mask) gives the same losses,
rewards and gradients as one row per sequence, for every objective that supports it."""

import datasets
import pytest
import torch

from rm_exps.batching import PairCollator, SharedPromptCollator, encode_pairs
from rm_exps.config import RunConfig
from rm_exps.models import load_tokenizer
from rm_exps.objectives import build_objective
from rm_exps.objectives.attention import SHARED_PROMPT_SDPA
from rm_exps.objectives.modules import unwrap
from rm_exps.plan import PlanError, build_runs

ROWS = datasets.Dataset.from_dict(
    {
        "prompt": ["What is 2+2? Answer briefly.", "Name a colour", "Write a long greeting for a friend please"],
        "chosen": ["4", "Blue, like the sky on a clear day", "Hello dear friend"],
        "rejected": ["It is five, I think, or maybe six", "Red", "Hi"],
    }
)


def setup(objective: str, **fields):
    torch.manual_seed(0)
    config = RunConfig(model="tiny-random-llama", objective=objective, **fields)
    tokenizer = load_tokenizer(config.model)
    obj = build_objective(config, tokenizer)
    module = obj.build_model().train()
    obj.setup(torch.device("cpu"))
    return obj, module, encode_pairs(ROWS, tokenizer, obj.input_format), tokenizer.pad_token_id


@pytest.mark.parametrize("share_prompt", [True, False], ids=["split_attention", "masked_attention"])
@pytest.mark.parametrize(
    "objective, fields",
    [("ex_rm", {}), ("ex_rm", {"use_all_response_hidden_embeddings": True}), ("im_rm", {}), ("sft", {})],
)
def test_shared_prompt_equals_one_row_per_sequence(objective, fields, share_prompt):
    """With `share_prompt` the model attends through objectives/attention.py (two SDPA calls per
    batch, no 4-D mask); without it, the same shared batch goes through SDPA with its 4-D mask. Both must equal
    the one-row-per-sequence layout."""
    obj, module, pairs, pad = setup(objective, share_prompt=share_prompt, **fields)
    assert (unwrap(module.model).config._attn_implementation == SHARED_PROMPT_SDPA) == share_prompt
    results = []
    for collate in (PairCollator(pad), SharedPromptCollator(pad)):
        module.zero_grad()
        batch = collate(pairs.examples)
        scores = obj.scores(module, batch)
        loss, _ = obj.loss(module, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        results.append((scores.detach(), loss.detach(), grads, batch))
    (s1, l1, g1, b1), (s2, l2, g2, b2) = results
    assert b2["input_ids"].shape[0] == len(ROWS) and b1["input_ids"].shape[0] == 2 * len(ROWS)
    assert int(b2["token_mask"].sum()) < int(b1["token_mask"].sum())  # the prompt once per pair
    torch.testing.assert_close(s2, s1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
    assert g1.keys() == g2.keys() and g1
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-5, msg=name)


def test_shared_batch_layout():
    _, _, pairs, pad = setup("im_rm")
    ex = pairs.examples[0]
    p, c, r = len(ex["prompt_ids"]), len(ex["chosen_ids"]), len(ex["rejected_ids"])
    batch = SharedPromptCollator(pad)([ex])
    mask = batch["attention_mask"][0, 0]
    assert batch["position_ids"][0].tolist() == list(range(p + c)) + list(range(p, p + r))
    assert mask[p + c, :p].all() and not mask[p + c, p : p + c].any()  # rejected sees the prompt, not chosen
    assert mask[p + c - 1, : p + c].all()
    assert batch["target_pred"].tolist()[c] == p - 1  # the first rejected token is predicted by the prompt's end
    assert batch["seq_end"].tolist() == [p + c - 1, p + c + r - 1]


def test_share_prompt_is_refused_for_gen_rm(tmp_path):
    plan = {
        "configurations": [
            {
                "base_config": {
                    "objective": "gen_rm",
                    "share_prompt": True,
                    "model": "tiny-random-llama",
                    "dataset_path": str(tmp_path),
                }
            }
        ]
    }
    with pytest.raises(PlanError, match="share_prompt works with ex_rm, im_rm, sft"):
        build_runs(plan)


def test_share_prompt_is_on_by_default_where_it_applies():
    """null (the default) shares the prompt for the objectives that take it, so users get the fast path
    without asking; false turns it off; a length limit keeps the one-row-per-sequence rows it is defined on."""
    for name in ("ex_rm", "im_rm", "sft"):
        assert RunConfig(objective=name).shares_prompt, name
    for name in ("gen_rm", "dpo", "icrm", "gram_judge", "gram_pretrain"):
        assert not RunConfig(objective=name).shares_prompt, name
    assert not RunConfig(objective="im_rm", share_prompt=False).shares_prompt
    assert not RunConfig(objective="im_rm", max_length=64).shares_prompt
    assert RunConfig(objective="im_rm", max_length=64, share_prompt=True).shares_prompt
