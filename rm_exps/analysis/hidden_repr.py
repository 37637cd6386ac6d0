"""Do the hidden representations of unseen Persona responses line up with those of seen ones?

    python -m rm_exps.analysis.hidden_repr --model smollm2-135m-instruct \\
        --dataset_path /path/to/agreeableness.jsonl

A re-implementation of the reference's ``persona_compute_hidden_repr_similarity.py`` (paper footnote
3). It trains nothing: it reads the hidden states of a *pretrained* model on the Persona data.

What is computed
----------------
h(x, y) is the last layer's hidden state (after the final norm) at the last real token of the
chat-formatted (prompt x, response y): the vector an EX-RM's linear head reads (``ValueHeadReward``;
same formatting, tokenization and right padding, so the last token is at ``attention_mask.sum - 1``
and is never cut as by the reference's flush-left off-by-one). With a chat template that ends a
turn with ``<|im_end|>\\n`` (SmolLM2, Qwen) that last token is the trailing ``\\n``.

* Seen differences, ``train_seen`` [N_train, d]: h(x, y_yes) - h(x, y_no) for the training pairs of
  the train split (training prefixes and tokens, exactly the pairs an RM is trained on).
* Unseen differences, ``train_unseen`` [K * N_train, d] and ``test_unseen`` [K * N_test, d]: for
  each of the K = |eval yes tokens| x |eval no tokens| token pairs (t_yes, t_no), in
  ``itertools.product`` order, h(x, p_yes + t_yes) - h(x, p_no + t_no); row ``k * N + i`` is pair
  k of example i. The eval prefixes p_yes / p_no are drawn once per example (the same prefixes for
  every token pair) exactly as the harness's Persona evaluator (``rm_exps.eval.persona``) draws
  them, so these are the unseen responses the trained RMs are scored on: a generator seeded with
  --seed (the data seed), then per split (train, test) the yes prefixes of all examples, then their
  no prefixes. With the default single prefix per side this is deterministic anyway; the
  reference's evaluator drew them from the unseeded global RNG, and its hidden-repr script used one
  fixed prefix per side.

What the numbers mean for the paper's claim
-------------------------------------------
The paper argues that an EX-RM generalizes under a token-level shift because its reward is a
linear function of h: a gradient step on a seen pair changes the reward margin of an unseen pair
by an amount proportional to <h-difference of the seen pair, h-difference of the unseen pair>
(with a frozen backbone exactly so; with a trained one, to first order). An IM-RM's reward,
log pi(y|x) - log pi_ref(y|x), also depends on the identity of the response tokens through the
unembedding, so learning that "yes"/"sure" beat "no"/"never" need not transfer to "certainly" vs
"nope" even when the hidden states align. So:

* ``similarity``: inner products and cosines between every seen difference and every unseen one.
  Mostly positive values mean one gradient step on seen pairs tends to raise the EX-RM's margin on
  unseen pairs too; values around 0 or negative would mean the premise of the EX-RM explanation
  fails for this model. ``train_seen_vs_train_seen`` (off-diagonal) is a scale reference: how
  aligned the seen differences are among themselves; ``..._same_prompt`` pairs each seen difference
  only with the unseen differences of the same prompt.
* ``max_margin``: the hard-margin SVM without bias on the seen differences, all labelled +1:
  ``min 1/2 ||w||^2 s.t. w . Delta_i >= 1``. Gradient descent on the Bradley-Terry (logistic) loss
  of a linear head over fixed features converges in direction to this w when the data are
  separable (Soudry et al., 2018), so w stands for the head a long-trained EX-RM with a frozen
  backbone would learn. Against the unseen differences we report ``margin`` = w . Delta (in the
  units where every seen difference has margin >= 1; ``frac_positive`` is the accuracy that head
  would get on the unseen pairs, ``frac_at_least_one`` the share reaching the seen margin) and
  ``cosine`` = w . Delta / (||w|| ||Delta||) (same sign, so same ``frac_positive``). Against the seen
  differences, ``cosine.mean`` and ``frac_positive`` (1.0 whenever separable) are what the reference
  printed. With fewer seen differences than dimensions (80 < 576 for SmolLM2) points in general
  position are always separable, so "separable" itself says little; the unseen margins are the
  informative part.
* ``prefix_controls`` (``--prefix_controls``): the unseen yes and no responses differ in their
  prefix ("My response would be " vs "I lean toward ") as well as in their token, and h at the last
  token sees both. The controls recompute the unseen differences with the prefixes swapped
  (p_no + t_yes minus p_yes + t_no) and with one shared prefix (only the token differs), with the
  same statistics. If "unseen" and "swapped_prefixes" disagree in sign, the prefix, not the
  yes/no meaning, dominates the unseen differences.

Caveats: these are properties of the untrained model's features. They support (or undercut) the
mechanism, not the trained EX-RM/IM-RM accuracies themselves, which the Persona runs measure. The
SVM is a frozen-feature idealization; a real EX-RM also moves the backbone.

Output: ``{output_dir}/{model short name}_{dataset stem}/`` with ``hidden_repr_similarity.json``
(config, sizes, every statistic; written atomically) and ``hidden_repr_similarity.safetensors``
(the three difference tensors in float32, ``max_margin_w`` when separable, and
``{train,test}_{control}_y_min_n_hidden_representations`` with --prefix_controls).

The quantiles use linear interpolation (numpy's default); the median is therefore the mean of the
two middle values for an even count, where the reference's ``torch.median`` took the lower one.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rm_exps.batching import PairCollator, encode_example, split_pair
from rm_exps.config import PERSONA_DEFAULTS
from rm_exps.data.errors import DatasetError
from rm_exps.data.persona import HUB_FILE, NO_PREFIXES, NO_TOKENS, YES_PREFIXES, YES_TOKENS
from rm_exps.objectives.modules import last_token_index
from rm_exps.outputs import atomic_path, write_json_atomic
from rm_exps.progress import quiet_library_output

RESULTS_FILE = "hidden_repr_similarity.json"
TENSORS_FILE = "hidden_repr_similarity.safetensors"
TRAIN_SEEN = "train_seen_y_min_n_hidden_representations"
TRAIN_UNSEEN = "train_unseen_y_min_n_hidden_representations"
TEST_UNSEEN = "test_unseen_y_min_n_hidden_representations"
MAX_MARGIN_W = "max_margin_w"

STAT_KEYS = ("mean", "min", "q1", "median", "q3", "max", "frac_positive", "count")


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def summarize(values: Any) -> dict[str, float | int | None]:
    """mean, min, Q1, median, Q3, max (linear-interpolation quantiles), fraction > 0 and count of
    all entries of ``values``; the statistics are None when there are no entries."""
    v = _as_numpy(values).ravel()
    if v.size == 0:
        return {**{k: None for k in STAT_KEYS}, "count": 0}
    q1, median, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    return {
        "mean": float(v.mean()),
        "min": float(v.min()),
        "q1": float(q1),
        "median": float(median),
        "q3": float(q3),
        "max": float(v.max()),
        "frac_positive": float((v > 0).mean()),
        "count": int(v.size),
    }


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm; a zero row stays zero (its cosine with anything counts as 0)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def similarity_stats(a: Any, b: Any, exclude_diagonal: bool = False) -> dict[str, dict]:
    """Statistics of the inner products and cosine similarities of every row of ``a`` [n, d] with
    every row of ``b`` [m, d] (n * m entries; ``exclude_diagonal`` drops the i == j entries, for
    ``b`` = ``a``)."""
    a, b = _as_numpy(a), _as_numpy(b)
    inner = a @ b.T
    cosine = _unit_rows(a) @ _unit_rows(b).T
    if exclude_diagonal:
        keep = ~np.eye(*inner.shape, dtype=bool)
        inner, cosine = inner[keep], cosine[keep]
    return {"inner_product": summarize(inner), "cosine": summarize(cosine)}


def same_prompt_stats(seen: Any, unseen: Any) -> dict[str, dict]:
    """Like ``similarity_stats`` but only between seen row i and unseen rows k * n + i (same prompt)."""
    seen, unseen = _as_numpy(seen), _as_numpy(unseen)
    n = seen.shape[0]
    if n == 0 or unseen.shape[0] % n:
        raise ValueError(f"unseen rows ({unseen.shape[0]}) are not a multiple of the seen rows ({n})")
    stacked = unseen.reshape(-1, n, seen.shape[1])
    inner = (stacked * seen[None]).sum(-1)
    cosine = (_unit_rows(unseen).reshape(stacked.shape) * _unit_rows(seen)[None]).sum(-1)
    return {"inner_product": summarize(inner), "cosine": summarize(cosine)}


# --------------------------------------------------------------------------------------------
# Max-margin separator
# --------------------------------------------------------------------------------------------


@dataclass
class MaxMarginSolution:
    """Hard-margin SVM without bias, all labels +1: min 1/2 ||w||^2 s.t. w . Delta_i >= 1.

    ``status`` is "separable" (w, alpha set and checked), "not_separable" (0 lies in the convex hull
    of the points up to ``rel_tol``, so no w gives every point a positive margin) or "solver_failed"
    (the QP raised or its answer failed the feasibility check; see ``message``).
    ``hull_distance`` is the distance from the origin to the convex hull of the points, which equals
    the geometric margin 1/||w|| when separable.
    """

    status: str
    message: str
    w: np.ndarray | None = None  # [d]
    alpha: np.ndarray | None = None  # [n] dual variables: w = sum_i alpha_i Delta_i, alpha >= 0
    hull_distance: float | None = None
    solver_status: str | None = None

    @property
    def separable(self) -> bool:
        return self.status == "separable"


def max_margin_separator(points: Any, rel_tol: float = 1e-6, margin_tol: float = 1e-4) -> MaxMarginSolution:
    """Solve the SVM through its Gram-matrix dual, in the bounded form with n variables.

    Writing the dual max_{alpha >= 0} sum(alpha) - 1/2 ||sum_i alpha_i Delta_i||^2 as alpha = s * lam with
    lam on the simplex gives: lam* = argmin_{lam >= 0, sum lam = 1} ||sum_i lam_i Delta_i||^2, the point
    p* of the convex hull closest to the origin; then w = p* / ||p*||^2 and alpha = lam* / ||p*||^2.
    Unlike the plain dual, this QP is bounded even for non-separable data (then p* = 0; Gordan's
    theorem: no w with all w . Delta_i > 0 iff 0 is in the hull), so separability is a measured
    number rather than a solver failure. It is solved with cvxopt on points scaled to max norm 1.

    ``rel_tol``: hull distances below rel_tol * max_i ||Delta_i|| count as 0 (not separable).
    ``margin_tol``: the solution is accepted only if every margin w . Delta_i >= 1 - margin_tol.
    """
    x = _as_numpy(points)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"max_margin_separator needs a non-empty [n, d] matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        return MaxMarginSolution("solver_failed", "the points contain NaN or inf")
    n = x.shape[0]
    scale = float(np.linalg.norm(x, axis=1).max())
    if scale == 0.0:
        return MaxMarginSolution("not_separable", "every point is zero", hull_distance=0.0)
    xs = x / scale
    gram = xs @ xs.T

    from cvxopt import matrix, solvers

    options = {"show_progress": False, "abstol": 1e-16, "reltol": 1e-14, "feastol": 1e-12, "maxiters": 200}
    try:
        sol = solvers.qp(
            matrix(gram),
            matrix(np.zeros(n)),
            matrix(-np.eye(n)),
            matrix(np.zeros(n)),
            matrix(np.ones((1, n))),
            matrix(1.0),
            options=options,
        )
    except (ValueError, ArithmeticError) as e:
        return MaxMarginSolution("solver_failed", f"cvxopt.solvers.qp raised {type(e).__name__}: {e}")
    lam = np.clip(np.array(sol["x"]).ravel(), 0.0, None)
    lam /= lam.sum()
    p = xs.T @ lam
    dist2 = float(p @ p)
    hull_distance = float(np.sqrt(dist2)) * scale
    if dist2 <= rel_tol**2:
        return MaxMarginSolution(
            "not_separable",
            f"the convex hull of the points contains the origin (distance {hull_distance:.3g} <= "
            f"{rel_tol:g} x the largest norm {scale:.3g})",
            hull_distance=hull_distance,
            solver_status=sol["status"],
        )
    margins = xs @ p / dist2
    if margins.min() < 1.0 - margin_tol:
        return MaxMarginSolution(
            "solver_failed",
            f"solution failed the feasibility check: min margin {margins.min():.6g} < 1 - {margin_tol:g} "
            f"(cvxopt status {sol['status']!r}, hull distance {hull_distance:.3g})",
            hull_distance=hull_distance,
            solver_status=sol["status"],
        )
    w = p / (dist2 * scale)
    alpha = lam / (dist2 * scale**2)
    return MaxMarginSolution(
        "separable",
        f"separable (cvxopt status {sol['status']!r})",
        w=w,
        alpha=alpha,
        hull_distance=hull_distance,
        solver_status=sol["status"],
    )


def kkt_report(points: Any, w: Any, alpha: Any, sv_rel_tol: float = 1e-6) -> dict[str, float | int]:
    """How well (w, alpha) satisfies the SVM's KKT conditions on ``points`` (all labels +1).

    min_margin >= 1 (primal feasibility); min_alpha >= 0 (dual feasibility); stationarity_residual
    = ||w - sum alpha_i Delta_i|| / ||w|| ~ 0; support vectors (alpha_i > sv_rel_tol * max alpha) are
    tight: support_vector_max_gap = max |w . Delta_i - 1| ~ 0; complementary_slackness =
    sum alpha_i |w . Delta_i - 1| / sum alpha_i ~ 0; relative_duality_gap ~ 0.
    """
    x, w, alpha = _as_numpy(points), _as_numpy(w), _as_numpy(alpha)
    margins = x @ w
    w2 = float(w @ w)
    support = alpha > sv_rel_tol * alpha.max()
    dual_value = float(alpha.sum() - 0.5 * np.sum((x.T @ alpha) ** 2))
    return {
        "min_margin": float(margins.min()),
        "min_alpha": float(alpha.min()),
        "stationarity_residual": float(np.linalg.norm(w - x.T @ alpha) / np.sqrt(w2)),
        "num_support_vectors": int(support.sum()),
        "support_vector_max_gap": float(np.abs(margins[support] - 1.0).max()),
        "complementary_slackness": float(np.sum(alpha * np.abs(margins - 1.0)) / alpha.sum()),
        "relative_duality_gap": float(abs(0.5 * w2 - dual_value) / (0.5 * w2)),
    }


def separator_stats(w: Any, points: Any) -> dict[str, dict]:
    """Statistics of margin = w . Delta (with ``frac_at_least_one``) and of cosine(w, Delta) over
    the rows Delta of ``points``."""
    w, x = _as_numpy(w), _as_numpy(points)
    margins = x @ w
    cosines = _unit_rows(x) @ (w / np.linalg.norm(w))
    margin = summarize(margins)
    margin["frac_at_least_one"] = float((margins >= 1.0).mean()) if margins.size else None
    return {"margin": margin, "cosine": summarize(cosines)}


# --------------------------------------------------------------------------------------------
# Hidden states
# --------------------------------------------------------------------------------------------


@torch.inference_mode()
def last_token_hidden_states(
    model: torch.nn.Module, tokenizer: Any, examples: Sequence[dict[str, str]], batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h(x, chosen), h(x, rejected)), each [n, d] float32: the backbone's last_hidden_state at the
    last real token of each chat-formatted, right-padded row, as in ValueHeadReward."""
    backbone = model.base_model
    device = next(model.parameters()).device
    collate = PairCollator(tokenizer.pad_token_id)
    encoded = [encode_example(tokenizer, ex, "chat") for ex in examples]
    chosen, rejected = [], []
    for start in range(0, len(encoded), batch_size):
        batch = collate(encoded[start : start + batch_size])
        input_ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        hidden = backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state
        rows = torch.arange(input_ids.shape[0], device=device)
        c, r = split_pair(hidden[rows, last_token_index(mask)].float().cpu())
        chosen.append(c)
        rejected.append(r)
    if not encoded:
        d = model.get_input_embeddings().embedding_dim
        return torch.zeros(0, d), torch.zeros(0, d)
    return torch.cat(chosen), torch.cat(rejected)


def draw_eval_prefixes(
    n: int, yes_prefixes: Sequence[str], no_prefixes: Sequence[str], generator: torch.Generator
) -> list[tuple[str, str]]:
    """One (yes prefix, no prefix) per example, as PersonaShiftEvaluator draws them: n yes indices
    in one randint call, then n no indices, from ``generator``."""

    def pick(options):
        return [options[i] for i in torch.randint(0, len(options), (n,), generator=generator).tolist()]

    return list(zip(pick(yes_prefixes), pick(no_prefixes)))


def response_hidden_states(
    model, tokenizer, prompts: Sequence[str], responses: Sequence[Sequence[str]], batch_size: int
) -> list[torch.Tensor]:
    """h(x_i, responses[k][i]) as one [n, d] tensor per response list k. Two lists go through each
    pass, as the chosen and rejected halves of a pair batch (an odd last list is paired with itself)."""
    out: list[torch.Tensor] = []
    for k in range(0, len(responses), 2):
        first = responses[k]
        second = responses[k + 1] if k + 1 < len(responses) else first
        examples = [{"prompt": x, "chosen": a, "rejected": b} for x, a, b in zip(prompts, first, second)]
        h_first, h_second = last_token_hidden_states(model, tokenizer, examples, batch_size)
        out.append(h_first)
        if k + 1 < len(responses):
            out.append(h_second)
    return out


# Prefix controls: which prefix goes before the yes token and before the no token.
PREFIX_VARIANTS = {
    "unseen": ("yes", "no"),  # the reference's unseen responses
    "swapped_prefixes": ("no", "yes"),  # p_no + t_yes  vs  p_yes + t_no
    "same_prefix_yes": ("yes", "yes"),  # p_yes + t_yes vs  p_yes + t_no: only the token differs
    "same_prefix_no": ("no", "no"),  # p_no + t_yes  vs  p_no + t_no
}


def unseen_difference_sets(
    model,
    tokenizer,
    prompts: Sequence[str],
    prefixes: Sequence[tuple[str, str]],
    yes_tokens: Sequence[str],
    no_tokens: Sequence[str],
    batch_size: int,
    variants: Sequence[str] = ("unseen",),
) -> dict[str, torch.Tensor]:
    """For each variant of PREFIX_VARIANTS, [len(yes) * len(no) * n, d]: row k * n + i is
    h(x_i, a_i + t_yes) - h(x_i, b_i + t_no) for the k-th (t_yes, t_no) of
    itertools.product(yes_tokens, no_tokens), where (a_i, b_i) are example i's (yes, no) eval
    prefixes for "unseen", and the other combinations for the controls. Each distinct response is
    encoded once."""
    prefix_of = {"yes": [p for p, _ in prefixes], "no": [q for _, q in prefixes]}
    keys: list[tuple[str, str]] = []
    for variant in variants:
        side_yes, side_no = PREFIX_VARIANTS[variant]
        keys += [(side_yes, t) for t in yes_tokens] + [(side_no, t) for t in no_tokens]
    keys = list(dict.fromkeys(keys))
    responses = [[p + token for p in prefix_of[side]] for side, token in keys]
    h = dict(zip(keys, response_hidden_states(model, tokenizer, prompts, responses, batch_size)))
    out = {}
    for variant in variants:
        side_yes, side_no = PREFIX_VARIANTS[variant]
        out[variant] = torch.cat(
            [h[(side_yes, a)] - h[(side_no, b)] for a, b in itertools.product(yes_tokens, no_tokens)]
        )
    return out


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rm_exps.analysis.hidden_repr",
        description="Persona hidden-representation similarity of seen vs unseen responses (paper footnote 3).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="built-in model, local folder or hub id (pretrained; nothing is trained)",
    )
    p.add_argument(
        "--dataset_path",
        "--dataset",
        dest="dataset_path",
        default=None,
        help=f"persona jsonl; default: the hub file {HUB_FILE} (needs network)",
    )
    p.add_argument(
        "--model_cache_dir",
        "--cache_dir",
        dest="model_cache_dir",
        default=None,
        help="hub download cache for the model",
    )
    p.add_argument(
        "--answer_matching_behavior_to_use",
        default="Yes",
        help="keep records with this answer_matching_behavior ('' keeps all)",
    )
    p.add_argument("--num_train_samples", type=int, default=80, help="train examples (<= 0: all)")
    p.add_argument("--num_test_samples", type=int, default=40, help="test examples (<= 0: all the rest)")
    p.add_argument(
        "--seed",
        "--dataset_prep_random_seed",
        dest="seed",
        type=int,
        default=875,
        help="the data seed (dataset_prep_random_seed): the split and training responses, and "
        "the per-example eval prefixes as the Persona evaluator draws them",
    )
    lists = [
        ("--output_tokens_matching_yes", list(YES_TOKENS), "training yes tokens"),
        ("--output_tokens_matching_no", list(NO_TOKENS), "training no tokens"),
        ("--prefixes_matching_yes", list(YES_PREFIXES), "training yes prefixes"),
        ("--prefixes_matching_no", list(NO_PREFIXES), "training no prefixes"),
        ("--eval_output_tokens_matching_yes", PERSONA_DEFAULTS["eval_output_tokens_matching_yes"], "unseen yes tokens"),
        ("--eval_output_tokens_matching_no", PERSONA_DEFAULTS["eval_output_tokens_matching_no"], "unseen no tokens"),
    ]
    for flag, default, help_text in lists:
        p.add_argument(flag, nargs="+", default=list(default), help=help_text)
    # The reference spelled these singular and gave one a string default with nargs="+" (its bug
    # 18); both spellings are accepted here and every list flag is a list.
    p.add_argument(
        "--eval_prefixes_matching_yes",
        "--eval_prefix_matching_yes",
        dest="eval_prefixes_matching_yes",
        nargs="+",
        default=list(PERSONA_DEFAULTS["eval_prefixes_matching_yes"]),
        help="unseen yes prefixes (one is drawn per example)",
    )
    p.add_argument(
        "--eval_prefixes_matching_no",
        "--eval_prefix_matching_no",
        dest="eval_prefixes_matching_no",
        nargs="+",
        default=list(PERSONA_DEFAULTS["eval_prefixes_matching_no"]),
        help="unseen no prefixes (one is drawn per example)",
    )
    p.add_argument("--batch_size", type=int, default=8, help="pairs per forward pass (2x rows)")
    p.add_argument(
        "--output_dir", default="outputs/persona_hidden_repr", help="results go into <output_dir>/<model>_<dataset>/"
    )
    p.add_argument("--use_bf16", action="store_true", help="load the model in bfloat16 (statistics stay float64)")
    p.add_argument(
        "--prefix_controls",
        action="store_true",
        help="also compute the unseen differences with the eval prefixes swapped or shared "
        "(p_no + t_yes - p_yes + t_no, and one prefix for both tokens): separates the "
        "effect of the prefixes from that of the tokens (about doubles the unseen forwards)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device to run on")
    return p


def model_short_name(model: str) -> str:
    return Path(model.rstrip("/\\")).name or model


def dataset_stem(dataset_path: str | None) -> str:
    return Path(dataset_path if dataset_path is not None else HUB_FILE).stem


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Compute everything, write the outputs and return the results dict."""
    from transformers import AutoModelForCausalLM

    from rm_exps.data.persona import build_persona_pairs, load_persona_records
    from rm_exps.models import load_model, load_tokenizer

    start = time.perf_counter()
    if args.batch_size < 1:
        raise ValueError("--batch_size must be >= 1")
    out_dir = Path(args.output_dir) / f"{model_short_name(args.model)}_{dataset_stem(args.dataset_path)}"

    splits = build_persona_pairs(
        load_persona_records(args.dataset_path),
        args.answer_matching_behavior_to_use,
        args.num_train_samples,
        args.num_test_samples,
        seed=args.seed,
        yes_tokens=args.output_tokens_matching_yes,
        no_tokens=args.output_tokens_matching_no,
        yes_prefixes=args.prefixes_matching_yes,
        no_prefixes=args.prefixes_matching_no,
    )
    train, test = splits["train"], splits["test"]
    generator = torch.Generator().manual_seed(args.seed)  # as PersonaShiftEvaluator(seed=dataset_prep_random_seed)
    eval_prefixes = {
        name: draw_eval_prefixes(len(split), args.eval_prefixes_matching_yes, args.eval_prefixes_matching_no, generator)
        for name, split in (("train", train), ("test", test))
    }

    tokenizer = load_tokenizer(args.model, cache_dir=args.model_cache_dir)
    dtype = torch.bfloat16 if args.use_bf16 else torch.float32
    with torch.random.fork_rng(devices=[]):  # rows added to the embeddings are initialized randomly
        torch.manual_seed(args.seed)
        model = load_model(args.model, AutoModelForCausalLM, tokenizer, dtype=dtype, cache_dir=args.model_cache_dir)
    model.to(args.device).eval()

    yes_t, no_t = args.eval_output_tokens_matching_yes, args.eval_output_tokens_matching_no
    forward_start = time.perf_counter()
    h_chosen, h_rejected = last_token_hidden_states(model, tokenizer, list(train), args.batch_size)
    train_seen = h_chosen - h_rejected
    variants = list(PREFIX_VARIANTS) if args.prefix_controls else ["unseen"]
    unseen = {
        name: unseen_difference_sets(
            model, tokenizer, list(split["prompt"]), eval_prefixes[name], yes_t, no_t, args.batch_size, variants
        )
        for name, split in (("train", train), ("test", test))
    }
    train_unseen, test_unseen = unseen["train"]["unseen"], unseen["test"]["unseen"]
    forward_seconds = time.perf_counter() - forward_start

    svm = max_margin_separator(train_seen)
    max_margin: dict[str, Any] = {
        "problem": "min 1/2 ||w||^2 s.t. w . Delta_i >= 1 for every train-seen difference (no bias)",
        "solver": "cvxopt.solvers.qp on the simplex form of the Gram-matrix dual (min-norm point of the convex hull)",
        "status": svm.status,
        "separable": svm.separable,
        "message": svm.message,
        "solver_status": svm.solver_status,
        "hull_distance": svm.hull_distance,
    }
    if svm.separable:
        seen_stats = separator_stats(svm.w, train_seen)
        max_margin.update(
            {
                "w_norm": float(np.linalg.norm(svm.w)),
                "geometric_margin": 1.0 / float(np.linalg.norm(svm.w)),
                "kkt": kkt_report(train_seen, svm.w, svm.alpha),
                "train_seen": {
                    "mean_cosine": seen_stats["cosine"]["mean"],
                    "frac_positive": seen_stats["margin"]["frac_positive"],
                    **seen_stats,
                },
                "train_unseen": separator_stats(svm.w, train_unseen),
                "test_unseen": separator_stats(svm.w, test_unseen),
            }
        )

    d = train_seen.shape[1]
    pairs = [list(pair) for pair in itertools.product(yes_t, no_t)]
    results = {
        "description": "Persona hidden-representation similarity (see rm_exps/analysis/hidden_repr.py)",
        "config": vars(args),
        "model": {"name": args.model, "dtype": str(dtype).removeprefix("torch."), "hidden_size": d},
        "representation": "last-layer hidden state (base_model last_hidden_state) at the last real token "
        "(attention_mask.sum - 1) of the chat-formatted, right-padded (prompt, response)",
        "sizes": {
            "num_train": len(train),
            "num_test": len(test),
            "hidden_size": d,
            "unseen_token_pairs": pairs,
            "num_unseen_token_pairs": len(pairs),
            "unseen_row_order": "row k * N + i = token pair k, example i",
            "train_seen": list(train_seen.shape),
            "train_unseen": list(train_unseen.shape),
            "test_unseen": list(test_unseen.shape),
        },
        "eval_prefixes": {name: [list(p) for p in prefixes] for name, prefixes in eval_prefixes.items()},
        "similarity": {
            "train_seen_vs_train_unseen": similarity_stats(train_seen, train_unseen),
            "train_seen_vs_test_unseen": similarity_stats(train_seen, test_unseen),
            "train_seen_vs_train_unseen_same_prompt": same_prompt_stats(train_seen, train_unseen),
            "train_seen_vs_train_seen": similarity_stats(train_seen, train_seen, exclude_diagonal=True),
        },
        "difference_norms": {
            "train_seen": summarize(train_seen.norm(dim=1)),
            "train_unseen": summarize(train_unseen.norm(dim=1)),
            "test_unseen": summarize(test_unseen.norm(dim=1)),
        },
        "max_margin": max_margin,
        "prefix_controls": None,
        "tensors_file": TENSORS_FILE,
        "seconds": {"load": round(forward_start - start, 2), "forward": round(forward_seconds, 2), "total": None},
    }

    tensors = {TRAIN_SEEN: train_seen, TRAIN_UNSEEN: train_unseen, TEST_UNSEEN: test_unseen}
    if args.prefix_controls:
        controls = {}
        for variant in variants[1:]:
            side_yes, side_no = PREFIX_VARIANTS[variant]
            entry: dict[str, Any] = {
                "yes_token_prefix": f"eval {side_yes} prefix",
                "no_token_prefix": f"eval {side_no} prefix",
            }
            for name in ("train", "test"):
                diffs = unseen[name][variant]
                entry[name] = {
                    "similarity": similarity_stats(train_seen, diffs),
                    "max_margin": separator_stats(svm.w, diffs) if svm.separable else None,
                }
                tensors[f"{name}_{variant}_y_min_n_hidden_representations"] = diffs
            controls[variant] = entry
        results["prefix_controls"] = controls
    if svm.separable:
        tensors[MAX_MARGIN_W] = torch.from_numpy(svm.w).float()
    _save_tensors(out_dir / TENSORS_FILE, tensors, {"unseen_token_pairs": json.dumps(pairs), "model": args.model})
    results["seconds"]["total"] = round(time.perf_counter() - start, 2)
    write_json_atomic(out_dir / RESULTS_FILE, results)
    results["output_dir"] = str(out_dir)
    return results


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def format_summary(results: dict[str, Any]) -> str:
    s = results["sizes"]
    lines = [
        f"hidden-representation similarity: {results['model']['name']} (untrained), "
        f"{s['num_train']} train / {s['num_test']} test examples, d = {s['hidden_size']}, "
        f"{s['num_unseen_token_pairs']} unseen token pairs",
        f"  {'':28}{'inner product: mean / median / frac>0':>40}   {'cosine: mean / median / frac>0':>32}",
    ]
    for name in ("train_seen_vs_train_unseen", "train_seen_vs_test_unseen", "train_seen_vs_train_seen"):
        ip, cos = results["similarity"][name]["inner_product"], results["similarity"][name]["cosine"]
        lines.append(
            f"  {name:28}{_fmt(ip['mean']):>16} / {_fmt(ip['median']):>9} / {_fmt(ip['frac_positive']):>7}"
            f"   {_fmt(cos['mean']):>14} / {_fmt(cos['median']):>7} / {_fmt(cos['frac_positive']):>5}"
        )
    mm = results["max_margin"]
    if mm["separable"]:
        lines.append(
            f"  max-margin w on the train-seen differences: separable, "
            f"{mm['kkt']['num_support_vectors']} support vectors, geometric margin {_fmt(mm['geometric_margin'])}"
        )
        lines.append(
            f"    train seen:   cos(w, D) mean {_fmt(mm['train_seen']['mean_cosine'])}, "
            f"frac w.D > 0 {_fmt(mm['train_seen']['frac_positive'])}"
        )
        for name in ("train_unseen", "test_unseen"):
            m, c = mm[name]["margin"], mm[name]["cosine"]
            lines.append(
                f"    {name + ':':13} w.D median {_fmt(m['median'])} (min {_fmt(m['min'])}), "
                f"frac w.D > 0 {_fmt(m['frac_positive'])}, frac w.D >= 1 {_fmt(m['frac_at_least_one'])}, "
                f"cos mean {_fmt(c['mean'])}"
            )
    else:
        lines.append(f"  max-margin w on the train-seen differences: {mm['status']}: {mm['message']}")
    if results.get("prefix_controls"):
        lines.append("  prefix controls, train seen vs test variant: cosine mean / frac>0, frac w.D > 0")
        for variant, entry in results["prefix_controls"].items():
            cos = entry["test"]["similarity"]["cosine"]
            sep = entry["test"]["max_margin"]
            frac_w = _fmt(sep["margin"]["frac_positive"]) if sep else "n/a"
            lines.append(f"    {variant:18} {_fmt(cos['mean']):>8} / {_fmt(cos['frac_positive']):>6}, {frac_w}")
    lines.append(f"  wrote {Path(results['output_dir']) / RESULTS_FILE} ({results['seconds']['total']} s)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_library_output()
    try:
        results = run(args)
    except (DatasetError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
