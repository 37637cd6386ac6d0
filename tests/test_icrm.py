"""ICRM: the consistency term, the generator weights, reg_ratio 0 (GRM) and the SFT gradient scale,
each against an independent computation on unpadded rows."""

import math

import pytest
import torch
import torch.nn.functional as F

from rm_exps.batching import GEN_PROBS, EncodedPairs, PairCollator, encode_example
from rm_exps.config import RunConfig
from rm_exps.models import load_tokenizer
from rm_exps.objectives import build_objective
from rm_exps.objectives.icrm import consistency_terms
from rm_exps.objectives.modules import generator_token_probs

MODEL = "tiny-random-llama"
PAIRS = [
    {"prompt": "What is 2+2?", "chosen": "4, because two and two make four.", "rejected": "5"},
    {"prompt": "Name a color of the sky", "chosen": "Blue.", "rejected": "It is green, I think, mostly."},
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MODEL)


def make(tokenizer, **fields):
    torch.manual_seed(0)
    obj = build_objective(RunConfig(objective="icrm", model=MODEL, generator=MODEL, **fields), tokenizer)
    model = obj.build_model().eval()  # eval: no value-head dropout, so values are deterministic
    with torch.no_grad():  # a random head would give near-zero values; make them spread
        model.head.weight.mul_(50)
    obj.setup(torch.device("cpu"))
    return obj, model


def encoded_batch(tokenizer):
    encoded = [encode_example(tokenizer, p, "chat") for p in PAIRS]
    return encoded, PairCollator(tokenizer.pad_token_id)(encoded)


def rows(encoded):
    return [
        (len(e["prompt_ids"]), e["prompt_ids"] + e[side]) for side in ("chosen_ids", "rejected_ids") for e in encoded
    ]


def loop_consistency(values, spans, probs):
    """Independent: per row lists; spans[i] = (start, end) of the response; returns (raw, q)."""
    n = len(values) // 2
    base = [sum(values[i][s:e]) / (e - s) for i, (s, e) in enumerate(spans)]
    total, qsum, count = 0.0, 0.0, 0
    for i, (s, e) in enumerate(spans):
        other = base[i + n] if i < n else base[i - n]
        d = [
            1 / (1 + math.exp(-(values[i][t] - other))) if i < n else 1 / (1 + math.exp(-(other - values[i][t])))
            for t in range(len(values[i]))
        ]
        for t in range(s, e - 1):  # both t and t+1 are response tokens
            w = 2 * probs[i][t + 1]
            total += -0.5 * (math.log(d[t] + 1e-6) * d[t + 1] + d[t] * math.log(d[t + 1] + 1e-6)) * w
            qsum += (d[t] + d[t + 1]) / 2 * w
            count += 1
    return total / (count + 1e-6), qsum / (count + 1e-6)


def test_consistency_terms_on_a_hand_built_batch():
    # 2 pairs, L = 7: rows have different prompt lengths and right padding.
    spans = [(2, 6), (1, 3), (3, 7), (2, 4)]  # chosen 0, chosen 1, rejected 0, rejected 1
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(4, 7, generator=gen, dtype=torch.double) * 2
    probs = torch.rand(4, 7, generator=gen, dtype=torch.double)
    mask = torch.zeros(4, 7, dtype=torch.long)
    for i, (s, e) in enumerate(spans):
        mask[i, s:e] = 1
    probs = probs * mask  # collator layout: 0 outside the response
    raw, q = consistency_terms(values, mask, probs)
    exp_raw, exp_q = loop_consistency(values.tolist(), spans, probs.tolist())
    assert raw.item() == pytest.approx(exp_raw, rel=1e-9) and q.item() == pytest.approx(exp_q, rel=1e-9)
    # Prompt and padding positions do not count: changing their values changes nothing.
    poked = values.clone()
    poked[mask == 0] = 100.0
    assert consistency_terms(poked, mask, probs)[0].item() == pytest.approx(raw.item(), rel=1e-9)
    # The gradient reaches only response positions.
    v = values.clone().requires_grad_(True)
    consistency_terms(v, mask, probs)[0].backward()
    assert (v.grad[mask == 0] == 0).all() and (v.grad[mask == 1] != 0).any()


def test_generator_token_probs_match_full_softmax(tokenizer):
    obj, _ = make(tokenizer)
    encoded, batch = encoded_batch(tokenizer)
    for top_p in (1.0, 0.3):
        probs = generator_token_probs(
            obj.generator,
            batch["input_ids"],
            batch["attention_mask"],
            batch["response_mask"],
            temperature=0.7,
            top_p=top_p,
        )
        for r, (plen, ids) in enumerate(rows(encoded)):
            with torch.no_grad():
                p = F.softmax(obj.generator(input_ids=torch.tensor([ids])).logits[0].double() / 0.7, dim=-1)
            for t in range(plen, len(ids)):
                dist = p[t - 1]
                if top_p < 1:
                    sorted_p, order = dist.sort(descending=True)
                    kept = order[: int((sorted_p.cumsum(0) < top_p).sum()) + 1]
                    expected = dist[ids[t]] / dist[kept].sum() if ids[t] in kept.tolist() else 0.0
                else:
                    expected = dist[ids[t]]
                assert probs[r, t].item() == pytest.approx(float(expected), abs=1e-5)
            assert (probs[r, :plen] == 0).all() and (probs[r, len(ids) :] == 0).all()


def test_icrm_loss_with_running_normalization(tokenizer):
    obj, model = make(tokenizer, reg_ratio=0.3, sft_weight=0.0)
    encoded, _ = encoded_batch(tokenizer)
    dataset = EncodedPairs([dict(e) for e in encoded])
    obj.precompute([dataset], PairCollator(tokenizer.pad_token_id), batch_size=2, device=torch.device("cpu"))
    assert obj.generator is None  # released after precomputation
    batch = PairCollator(tokenizer.pad_token_id)(dataset.examples)
    assert GEN_PROBS in batch

    values, spans, probs = [], [], []
    for r, (plen, ids) in enumerate(rows(encoded)):
        with torch.no_grad():
            hidden = model.model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0]
            values.append(model.model.score(hidden).squeeze(-1).double().tolist())
        spans.append((plen, len(ids)))
        side = dataset.examples[r % 2][GEN_PROBS][r // 2]
        probs.append([0.0] * plen + list(side))
    raw, q = loop_consistency(values, spans, probs)
    r_c = torch.tensor([values[0][-1], values[1][-1]])
    r_r = torch.tensor([values[2][-1], values[3][-1]])
    bt = -F.logsigmoid(r_c - r_r).mean().item()

    scale = 0.5
    for _ in range(2):  # the normalizer moves: s <- 0.95 s + 0.05 q before each use
        scale = 0.95 * scale + 0.05 * q
        with torch.no_grad():
            loss, metrics = obj.loss(model, batch)
        assert loss.item() == pytest.approx(0.7 * bt + 0.3 * raw / (scale + 1e-6), rel=1e-4)
        assert metrics["consistency scale"].item() == pytest.approx(scale, rel=1e-5)
    assert raw > 0 and abs(raw / scale) > 1e-3  # the term is not trivially zero


def test_reg_ratio_zero_is_bradley_terry_plus_sft(tokenizer):
    obj, model = make(tokenizer, reg_ratio=0.0, sft_weight=1.0)
    assert obj.generator is None  # GRM loads no generator
    encoded, batch = encoded_batch(tokenizer)
    with torch.no_grad():
        loss, metrics = obj.loss(model, batch)
    last, sft_terms = [], []
    for r, (plen, ids) in enumerate(rows(encoded)):
        with torch.no_grad():
            hidden = model.model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0]
            last.append(model.model.score(hidden[-1]).item())
            if r < 2:  # chosen rows: SFT head mean log-prob per response token
                logp = F.log_softmax(model.sft_head(hidden).double(), dim=-1)
                sft_terms.append(sum(logp[t - 1, ids[t]].item() for t in range(plen, len(ids))) / (len(ids) - plen))
    bt = -F.logsigmoid(torch.tensor(last[:2]) - torch.tensor(last[2:])).mean().item()
    sft = -sum(sft_terms) / 2
    assert loss.item() == pytest.approx(bt + sft, rel=1e-5)
    assert metrics["bt loss"].item() == pytest.approx(bt, rel=1e-5)
    assert "consistency loss" not in metrics
    # the reward of a response (evaluation) is the value at its last real token
    with torch.no_grad():
        r_c, r_r = obj.rewards(model, batch)
    assert torch.allclose(torch.cat([r_c, r_r]), torch.tensor(last), atol=1e-5)


def test_sft_head_reaches_the_backbone_through_the_gradient_scale(tokenizer):
    grads = {}
    for scale in (1.0, 1e-3):
        obj, model = make(tokenizer, reg_ratio=0.0, sft_weight=1.0, sft_grad_scale=scale)
        _, batch = encoded_batch(tokenizer)
        values, sft_logp = model(
            **{k: batch[k] for k in ("input_ids", "attention_mask", "response_mask")}, per_token=True
        )
        (-sft_logp.mean()).backward()
        backbone = model.model.base_model.layers[0].mlp.up_proj.weight.grad.clone()
        grads[scale] = (backbone, model.sft_head.weight.grad.clone())
    assert torch.allclose(grads[1e-3][0], grads[1.0][0] * 1e-3, atol=1e-9)
    assert torch.allclose(grads[1e-3][1], grads[1.0][1])  # the head itself gets the full gradient
    assert grads[1.0][0].abs().sum() > 0


def test_icrm_without_generator_is_a_clear_error(tokenizer):
    obj = build_objective(RunConfig(objective="icrm", model=MODEL, reg_ratio=0.1), tokenizer)
    with pytest.raises(ValueError, match="needs a `generator`"):
        obj.setup(torch.device("cpu"))
