"""Each objective's rewards and loss on a hand-built batch against an independent computation."""

import math

import pytest
import torch
import torch.nn.functional as F

from rm_exps.batching import PairCollator, chat_prompt_and_response, encode_example
from rm_exps.config import RunConfig
from rm_exps.eval.metrics import normalized_abs_margin, pairwise_accuracy, pairwise_metrics
from rm_exps.models import load_tokenizer
from rm_exps.objectives import build_objective

MODEL = "tiny-random-llama"
PAIRS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "It is five, clearly."},
    {"prompt": "Name a color that is often used for the sky in drawings", "chosen": "Blue.", "rejected": "No"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MODEL)


def make(objective, tokenizer, **fields):
    torch.manual_seed(0)
    obj = build_objective(RunConfig(objective=objective, model=MODEL, kl_coeff=0.5, **fields), tokenizer)
    return obj, obj.build_model()


def batch_for(obj, tokenizer):
    encoded = [encode_example(tokenizer, p, obj.input_format) for p in PAIRS]
    return encoded, PairCollator(tokenizer.pad_token_id)(encoded)


def rows(encoded):
    """Unpadded (prompt_len, ids) of every row: chosen rows then rejected rows."""
    return [
        (len(e["prompt_ids"]), e["prompt_ids"] + e[side]) for side in ("chosen_ids", "rejected_ids") for e in encoded
    ]


def independent_logp(causal_lm, prompt_len, ids):
    """Summed log-probability of ids[prompt_len:] from the model's full logits on the unpadded row."""
    with torch.no_grad():
        logits = causal_lm(input_ids=torch.tensor([ids])).logits[0]
    logp = F.log_softmax(logits.double(), dim=-1)
    return sum(logp[t - 1, ids[t]].item() for t in range(prompt_len, len(ids)))


def test_pair_batch_keeps_every_response_token(tokenizer):
    obj, _ = make("im_rm", tokenizer)
    encoded, batch = batch_for(obj, tokenizer)
    assert batch["input_ids"].shape[0] == 4
    for r, (plen, ids) in enumerate(rows(encoded)):
        n = len(ids)
        assert batch["attention_mask"][r].sum() == n
        assert batch["input_ids"][r, :n].tolist() == ids  # flush left, nothing dropped
        assert batch["response_mask"][r].tolist() == [0] * plen + [1] * (n - plen) + [0] * (
            batch["input_ids"].shape[1] - n
        )
    # the response keeps the template's end-of-turn suffix
    _, response = chat_prompt_and_response(tokenizer, "hi", "yo")
    assert response == "yo" + tokenizer.eos_token


def test_im_rm_reward_is_kl_times_summed_response_logprob_ratio(tokenizer):
    obj, policy = make("im_rm", tokenizer)
    with torch.no_grad():  # move the policy away from the reference
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    encoded, batch = batch_for(obj, tokenizer)
    with torch.no_grad():
        r_c, r_r = obj.rewards(policy, batch)
    expected = [
        0.5 * (independent_logp(policy.model, plen, ids) - independent_logp(obj.reference.model, plen, ids))
        for plen, ids in rows(encoded)
    ]
    assert torch.allclose(torch.cat([r_c, r_r]).double(), torch.tensor(expected, dtype=torch.double), atol=1e-4)
    assert abs(expected[0]) > 1e-3  # the test can fail: the ratio is not trivially zero

    loss, metrics = obj.loss(policy, batch)
    manual = -(F.logsigmoid(torch.tensor(expected[:2]) - torch.tensor(expected[2:]))).mean()
    assert loss.item() == pytest.approx(manual.item(), abs=1e-4)
    assert set(metrics) == {"loss", "chosen rewards", "rejected rewards", "reward margin", "accuracy"}


def test_im_rm_without_reference(tokenizer):
    obj, policy = make("im_rm", tokenizer, no_ref_model=True)
    assert obj.reference is None
    encoded, batch = batch_for(obj, tokenizer)
    with torch.no_grad():
        r_c, _ = obj.rewards(policy, batch)
    plen, ids = rows(encoded)[0]
    assert r_c[0].item() == pytest.approx(0.5 * independent_logp(policy.model, plen, ids), abs=1e-4)


def test_ex_rm_reads_last_real_token_under_right_padding(tokenizer):
    obj, model = make("ex_rm", tokenizer)
    encoded, batch = batch_for(obj, tokenizer)
    assert (batch["attention_mask"] == 0).any()  # the batch is padded
    with torch.no_grad():
        r_c, r_r = obj.rewards(model, batch)
        expected = []
        for _, ids in rows(encoded):
            hidden = model.model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
            expected.append(model.model.score(hidden).item())
    assert torch.allclose(torch.cat([r_c, r_r]), torch.tensor(expected), atol=1e-5)
    assert model.model.score.bias is None


def test_ex_rm_mean_over_response(tokenizer):
    obj, model = make("ex_rm", tokenizer, use_all_response_hidden_embeddings=True)
    encoded, batch = batch_for(obj, tokenizer)
    with torch.no_grad():
        r_c, _ = obj.rewards(model, batch)
        plen, ids = rows(encoded)[0]
        hidden = model.model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0, plen:]
    assert r_c[0].item() == pytest.approx(model.model.score(hidden).mean().item(), abs=1e-5)


def test_gen_rm_reads_yes_no_at_the_generation_position(tokenizer):
    obj, model = make("gen_rm", tokenizer)
    encoded, batch = batch_for(obj, tokenizer)
    yes, no = obj.yes_no_ids
    text = tokenizer.decode(encoded[0]["chosen_ids"])
    assert "Verification: Is the answer correct (Yes/No)?" in text and text.endswith("<|assistant|>")
    with torch.no_grad():
        r_c, r_r = obj.rewards(model, batch)
        logps = []
        for _, ids in rows(encoded):
            logps.append(F.log_softmax(model.model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1))
    assert torch.allclose(torch.cat([r_c, r_r]).double(), torch.stack([lp[yes].exp() for lp in logps]), atol=1e-5)
    loss, _ = obj.loss(model, batch)
    expected = -torch.stack([logps[0][yes], logps[1][yes], logps[2][no], logps[3][no]]).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_sft_loss_is_negative_chosen_logprob(tokenizer):
    obj, model = make("sft", tokenizer)
    encoded, batch = batch_for(obj, tokenizer)
    loss, metrics = obj.loss(model, batch)
    chosen = [independent_logp(model.model, plen, ids) for plen, ids in rows(encoded)[:2]]
    assert loss.item() == pytest.approx(-sum(chosen) / 2, abs=1e-4)
    assert set(metrics) == {"loss", "chosen logprobs", "rejected logprobs"}


def test_pairwise_metrics_on_a_known_case():
    r_c, r_r = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.0, 3.0, 0.5])
    assert pairwise_accuracy(r_c, r_r).item() == pytest.approx((1 + 0 + 0.5) / 3)
    metrics = pairwise_metrics("eval test", r_c, r_r)
    expected_loss = -(math.log(1 / (1 + math.exp(-1))) + math.log(1 / (1 + math.exp(1))) + math.log(0.5)) / 3
    assert metrics["eval test loss"] == pytest.approx(expected_loss)
    std = torch.tensor([1.0, 2.0, 0.5, 0.0, 3.0, 0.5]).std().item()
    assert metrics["eval test normalized abs reward margin"] == pytest.approx((1 + 1 + 0) / 3 / (std + 1e-8))
    assert normalized_abs_margin(r_c, r_r).item() == pytest.approx(metrics["eval test normalized abs reward margin"])
    assert metrics["eval test chosen reward"] == pytest.approx(3.5 / 3)


def test_precomputed_reference_logprobs_equal_the_live_reference(tokenizer):
    obj, policy = make("im_rm", tokenizer)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    encoded, batch = batch_for(obj, tokenizer)
    with torch.no_grad():
        live = torch.cat(obj.rewards(policy, batch))
    from rm_exps.batching import EncodedPairs

    dataset = EncodedPairs([dict(e) for e in encoded])
    obj.precompute([dataset], PairCollator(tokenizer.pad_token_id), batch_size=1, device=torch.device("cpu"))
    assert obj.reference is None  # released once nothing needs it
    cached_batch = PairCollator(tokenizer.pad_token_id)(dataset.examples)
    assert "ref_logps" in cached_batch
    with torch.no_grad():
        cached = torch.cat(obj.rewards(policy, cached_batch))
    assert torch.allclose(live, cached, atol=1e-5)


DATED_TEMPLATE = (
    "{{ bos_token }}Today Date: {{ strftime_now('%d %b %Y') }}\n{% for m in messages %}<|{{ m['role'] }}|>"
    "{{ m['content'] }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.mark.parametrize("fmt", ["chat", "verification", "two_answers", "judge"])
def test_encodings_do_not_depend_on_the_date(fmt, monkeypatch):
    """A chat template that prints today's date (Llama-3.x's strftime_now) must not change the token ids from
    one day to the next (reference log-prob and sample caches are keyed by them): the date is pinned."""
    import datetime as dt

    import transformers.utils.chat_template_utils as ctu

    from rm_exps.eval.generation import chat_prompt_ids

    tokenizer = load_tokenizer(MODEL)
    tokenizer.chat_template = DATED_TEMPLATE
    example = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}

    def encodings(day):
        class Frozen(dt.datetime):
            @classmethod
            def now(cls, tz=None):
                return cls(2025, 1, day, 12, 0)

        monkeypatch.setattr(ctu, "datetime", Frozen)
        assert Frozen.now().strftime("%d") == f"{day:02d}"
        return encode_example(tokenizer, example, fmt), chat_prompt_ids(tokenizer, "What is 2+2?")

    first, second = encodings(1), encodings(2)
    assert first == second
    assert "Today Date: 26 Jul 2024" in tokenizer.decode(
        first[0]["chosen_ids"] if fmt in ("verification", "judge") else first[0]["prompt_ids"]
    )
