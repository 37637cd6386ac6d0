import json
import math

import numpy as np
import pytest
import torch

from rm_exps.analysis import hidden_repr as hr

SQ2 = math.sqrt(2.0)


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def test_summarize_known_values():
    s = hr.summarize(torch.tensor([3.0, -1.0, 1.0, 0.0, 2.0]))
    assert s == pytest.approx(
        {"mean": 1.0, "min": -1.0, "q1": 0.0, "median": 1.0, "q3": 2.0, "max": 3.0, "frac_positive": 0.6, "count": 5}
    )
    # even count: linear interpolation, median = mean of the two middle values
    s = hr.summarize(np.array([[0.0, 1.0], [2.0, 10.0]]))
    assert (s["q1"], s["median"], s["q3"]) == pytest.approx((0.75, 1.5, 4.0))
    assert hr.summarize(torch.zeros(0)) == {k: None for k in hr.STAT_KEYS} | {"count": 0}


def test_similarity_stats_known_inner_products_and_cosines():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 1.0], [-3.0, 0.0]])
    # inner products [[1, -3], [2, 0]]; cosines [[1/sqrt2, -1], [1/sqrt2, 0]]
    s = hr.similarity_stats(a, b)
    assert s["inner_product"] == pytest.approx(
        {"mean": 0.0, "min": -3.0, "q1": -0.75, "median": 0.5, "q3": 1.25, "max": 2.0, "frac_positive": 0.5, "count": 4}
    )
    cos = sorted([1 / SQ2, -1.0, 1 / SQ2, 0.0])
    assert s["cosine"]["mean"] == pytest.approx((SQ2 - 1) / 4)
    assert (s["cosine"]["min"], s["cosine"]["max"]) == pytest.approx((-1.0, 1 / SQ2))
    assert s["cosine"]["median"] == pytest.approx((cos[1] + cos[2]) / 2)
    assert s["cosine"]["frac_positive"] == 0.5


def test_similarity_stats_scale_invariance_of_cosines_and_diagonal_exclusion():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=g), torch.randn(9, 7, generator=g)
    s1, s2 = hr.similarity_stats(a, b), hr.similarity_stats(3 * a, 0.5 * b)
    assert s2["inner_product"]["mean"] == pytest.approx(1.5 * s1["inner_product"]["mean"])
    assert s2["cosine"] == pytest.approx(s1["cosine"])
    off = hr.similarity_stats(a, a, exclude_diagonal=True)
    assert off["cosine"]["count"] == 20 and off["cosine"]["max"] < 1 - 1e-6  # no self-cosine of 1
    full = (a @ a.T).double()
    expected = (full.sum() - full.diagonal().sum()) / 20
    assert off["inner_product"]["mean"] == pytest.approx(expected.item())


def test_same_prompt_stats_pairs_row_i_with_rows_k_n_plus_i():
    seen = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    unseen = torch.tensor(
        [
            [2.0, 0.0],
            [0.0, -1.0],  # pair 0: examples 0, 1
            [1.0, 5.0],
            [3.0, 4.0],
        ]
    )  # pair 1: examples 0, 1
    s = hr.same_prompt_stats(seen, unseen)
    # inner products: 2, -1, 1, 4
    assert s["inner_product"]["mean"] == pytest.approx(1.5) and s["inner_product"]["frac_positive"] == 0.75
    assert s["cosine"]["min"] == pytest.approx(-1.0) and s["cosine"]["max"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        hr.same_prompt_stats(seen, unseen[:3])


def test_zero_difference_has_cosine_zero():
    s = hr.similarity_stats(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]]))
    assert s["cosine"]["mean"] == 0.0 and s["cosine"]["frac_positive"] == 0.0


# --------------------------------------------------------------------------------------------
# Max-margin separator
# --------------------------------------------------------------------------------------------


def assert_kkt(points, sol, tol=1e-6):
    assert sol.separable, sol.message
    k = hr.kkt_report(points, sol.w, sol.alpha)
    assert k["min_margin"] >= 1 - tol  # primal feasibility
    assert k["min_alpha"] >= 0  # dual feasibility
    assert k["stationarity_residual"] <= tol  # w = sum alpha_i Delta_i
    assert k["support_vector_max_gap"] <= tol  # support vectors are tight
    assert k["complementary_slackness"] <= tol
    assert k["relative_duality_gap"] <= tol
    assert sol.hull_distance == pytest.approx(1 / np.linalg.norm(sol.w), rel=1e-6)
    return k


def test_max_margin_two_points_known_solution():
    pts = np.array([[1.0, 0.0], [0.0, 1.0]])
    sol = hr.max_margin_separator(pts)
    assert sol.status == "separable"
    assert sol.w == pytest.approx([1.0, 1.0], abs=1e-7)
    assert sol.alpha == pytest.approx([1.0, 1.0], abs=1e-6)
    assert sol.hull_distance == pytest.approx(1 / SQ2)
    assert assert_kkt(pts, sol)["num_support_vectors"] == 2


@pytest.mark.parametrize(
    "pts, w, n_sv",
    [
        ([[2.0, 0.0], [0.0, 1.0]], [0.5, 1.0], 2),
        ([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]], [1.0, 1.0], 2),  # (3, 3) is not a support vector
        ([[3.0, 4.0]], [0.12, 0.16], 1),  # one point: w = D / |D|^2
        ([[1.0, 0.0], [1.0, 0.0], [2.0, 5.0]], [1.0, 0.0], 2),  # duplicated support vector
    ],
)
def test_max_margin_other_known_solutions(pts, w, n_sv):
    pts = np.array(pts)
    sol = hr.max_margin_separator(torch.tensor(pts))
    assert sol.w == pytest.approx(w, abs=1e-7)
    assert assert_kkt(pts, sol)["num_support_vectors"] == n_sv


def test_max_margin_degenerate_tight_point_without_weight():
    # (1, 5) has margin exactly 1 at the optimum w = (1, 0) but zero dual weight (no strict
    # complementarity): interior-point methods converge slowly there, so it is less exact.
    pts = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 5.0]])
    sol = hr.max_margin_separator(pts)
    assert sol.w == pytest.approx([1.0, 0.0], abs=1e-6)
    assert_kkt(pts, sol)


@pytest.mark.parametrize(
    "pts",
    [
        [[1.0, 2.0], [-1.0, -2.0]],  # D and -D
        [[1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]],  # origin inside the hull
        [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]],  # origin on the hull's boundary: w.D > 0 for all is impossible
        [[0.0, 0.0], [0.0, 0.0]],  # all zero
    ],
)
def test_max_margin_not_separable_is_reported(pts):
    sol = hr.max_margin_separator(np.array(pts))
    assert sol.status == "not_separable" and not sol.separable
    assert sol.w is None and sol.hull_distance < 1e-5
    assert sol.message


def test_max_margin_bad_input():
    assert hr.max_margin_separator(np.array([[np.nan, 1.0]])).status == "solver_failed"
    with pytest.raises(ValueError):
        hr.max_margin_separator(np.zeros((0, 3)))


def primal_svm(pts):
    """The reference's formulation: min 1/2 |w|^2 s.t. -X w <= -1 (d variables)."""
    from cvxopt import matrix, solvers

    n, d = pts.shape
    sol = solvers.qp(
        matrix(np.eye(d)),
        matrix(np.zeros(d)),
        matrix(-pts),
        matrix(-np.ones(n)),
        options={"show_progress": False, "abstol": 1e-12, "reltol": 1e-10, "feastol": 1e-10},
    )
    assert sol["status"] == "optimal"
    return np.array(sol["x"]).ravel()


@pytest.mark.parametrize("n, d, scale", [(30, 20, 1.0), (10, 50, 1.0), (80, 576, 37.0)])
def test_max_margin_matches_primal_and_kkt_on_random_separable_data(n, d, scale):
    rng = np.random.default_rng(n + d)
    pts = scale * (rng.normal(size=(n, d)) + 0.8 * rng.normal(size=d))  # shared component: separable
    sol = hr.max_margin_separator(pts)
    assert_kkt(pts, sol, tol=1e-6)
    # The reference's primal formulation agrees. Its interior-point answer is the less exact one
    # (feasible by ~1e-9 too much); with a strongly convex objective a relative objective error e
    # allows a relative error ~sqrt(2e) in w, hence the looser tolerance on w.
    w_primal = primal_svm(pts)
    assert np.linalg.norm(sol.w) == pytest.approx(np.linalg.norm(w_primal), rel=1e-6)
    assert np.linalg.norm(sol.w) <= np.linalg.norm(w_primal) * (1 + 1e-9)
    assert np.linalg.norm(sol.w - w_primal) <= 1e-3 * np.linalg.norm(w_primal)
    # scaling the points scales w inversely
    sol2 = hr.max_margin_separator(10 * pts)
    assert sol2.w == pytest.approx(sol.w / 10, rel=1e-5, abs=1e-9)


def test_max_margin_random_non_separable():
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(100, 5))  # 100 centred points in 5-D: the hull contains the origin
    assert hr.max_margin_separator(pts).status == "not_separable"


def test_separator_stats_known_values():
    s = hr.separator_stats(np.array([1.0, 1.0]), torch.tensor([[1.0, 0.0], [2.0, 2.0], [-1.0, 0.0]]))
    assert s["margin"]["mean"] == pytest.approx(4 / 3)  # margins 1, 4, -1
    assert s["margin"]["frac_positive"] == pytest.approx(2 / 3)
    assert s["margin"]["frac_at_least_one"] == pytest.approx(2 / 3)
    assert (s["cosine"]["min"], s["cosine"]["median"], s["cosine"]["max"]) == pytest.approx((-1 / SQ2, 1 / SQ2, 1.0))


# --------------------------------------------------------------------------------------------
# Hidden states (tiny random model)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM

    from rm_exps.models import load_model, load_tokenizer

    tok = load_tokenizer("tiny-random-llama")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = load_model("tiny-random-llama", AutoModelForCausalLM, tok, dtype=torch.float32).eval()
    return model, tok


EXAMPLES = [
    {"prompt": "Is the sky blue?", "chosen": "A truthful reply is sure", "rejected": "My judgement: no"},
    {
        "prompt": "Would you say so? A much longer prompt than the others, to force padding.",
        "chosen": "yes",
        "rejected": "Considering the statement, I say never",
    },
    {"prompt": "Hm?", "chosen": "In my view, the answer is yes", "rejected": "no"},
]


def test_last_token_hidden_state_is_independent_of_padding_and_batching(tiny):
    from rm_exps.batching import encode_example

    model, tok = tiny
    hc, hr_ = hr.last_token_hidden_states(model, tok, EXAMPLES, batch_size=3)
    assert hc.shape == hr_.shape == (3, 32) and hc.dtype == torch.float32
    hc1, hr1 = hr.last_token_hidden_states(model, tok, EXAMPLES, batch_size=1)
    torch.testing.assert_close(hc, hc1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hr_, hr1, atol=1e-5, rtol=1e-5)
    # the last real token of each unpadded sequence (no token dropped)
    with torch.no_grad():
        for i, ex in enumerate(EXAMPLES):
            enc = encode_example(tok, ex, "chat")
            for side, h in (("chosen_ids", hc), ("rejected_ids", hr_)):
                ids = torch.tensor([enc["prompt_ids"] + enc[side]])
                full = model(ids, output_hidden_states=True).hidden_states[-1][0, -1]
                torch.testing.assert_close(h[i], full, atol=1e-5, rtol=1e-5)


def test_unseen_differences_row_order(tiny):
    model, tok = tiny
    prompts = [e["prompt"] for e in EXAMPLES]
    prefixes = [("P1 ", "N1 "), ("P2 ", "N2 "), ("P1 ", "N2 ")]
    yes, no = ["certainly", "absolutely", "surely"], ["nope", "not really"]
    sets = hr.unseen_difference_sets(
        model, tok, prompts, prefixes, yes, no, batch_size=2, variants=list(hr.PREFIX_VARIANTS)
    )
    torch.testing.assert_close(
        sets["unseen"],
        hr.unseen_difference_sets(model, tok, prompts, prefixes, yes, no, 3)["unseen"],
        atol=1e-5,
        rtol=1e-5,
    )
    import itertools

    for variant, (side_yes, side_no) in hr.PREFIX_VARIANTS.items():
        diffs = sets[variant]
        assert diffs.shape == (6 * 3, 32)
        for k, (ty, tn) in enumerate(itertools.product(yes, no)):
            pick = {"yes": 0, "no": 1}
            ex = [
                {"prompt": x, "chosen": p[pick[side_yes]] + ty, "rejected": p[pick[side_no]] + tn}
                for x, p in zip(prompts, prefixes)
            ]
            hc, hn = hr.last_token_hidden_states(model, tok, ex, batch_size=3)
            torch.testing.assert_close(diffs[k * 3 : (k + 1) * 3], hc - hn, atol=1e-5, rtol=1e-5)
    # unseen + swapped = same_prefix_yes + same_prefix_no (each is a sum of the same four states)
    torch.testing.assert_close(
        sets["unseen"] + sets["swapped_prefixes"],
        sets["same_prefix_yes"] + sets["same_prefix_no"],
        atol=1e-5,
        rtol=1e-5,
    )


def test_response_hidden_states_odd_number_of_lists(tiny):
    model, tok = tiny
    prompts = [e["prompt"] for e in EXAMPLES]
    lists = [["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"]]
    hs = hr.response_hidden_states(model, tok, prompts, lists, batch_size=2)
    assert len(hs) == 3 and all(h.shape == (3, 32) for h in hs)
    single = hr.response_hidden_states(model, tok, prompts, lists[2:], batch_size=2)
    torch.testing.assert_close(hs[2], single[0], atol=1e-5, rtol=1e-5)


def test_eval_prefixes_match_the_persona_evaluator():
    from rm_exps.eval.persona import _draw

    yes, no = ["a", "b"], ["c", "d", "e"]
    ours, theirs = torch.Generator().manual_seed(875), torch.Generator().manual_seed(875)
    for n in (7, 4):  # train, then test, from one generator
        assert hr.draw_eval_prefixes(n, yes, no, ours) == list(zip(_draw(yes, n, theirs), _draw(no, n, theirs)))


def test_draw_eval_prefixes_is_seeded():
    draw = lambda: hr.draw_eval_prefixes(20, ["a", "b"], ["c", "d", "e"], torch.Generator().manual_seed(3))  # noqa: E731
    first = draw()
    assert first == draw() and len(first) == 20
    assert {p for p, _ in first} == {"a", "b"} and {q for _, q in first} <= {"c", "d", "e"}


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def test_parser_defaults_are_the_reference_plan_lists():
    a = hr.build_parser().parse_args([])
    assert a.model == "smollm2-135m-instruct" and a.dataset_path is None
    assert (a.num_train_samples, a.num_test_samples, a.seed, a.batch_size) == (80, 40, 875, 8)
    assert a.answer_matching_behavior_to_use == "Yes" and not a.use_bf16
    assert a.output_dir == "outputs/persona_hidden_repr"
    assert a.output_tokens_matching_yes == ["yes", "sure"] and a.output_tokens_matching_no == ["no", "never"]
    assert a.prefixes_matching_yes == ["In my view, the answer is ", "A truthful reply is "]
    assert a.prefixes_matching_no == ["My judgement: ", "Considering the statement, I say "]
    assert a.eval_output_tokens_matching_yes == ["certainly", "absolutely"]
    assert a.eval_output_tokens_matching_no == ["not really", "nope"]
    assert a.eval_prefixes_matching_yes == ["My response would be "]
    assert a.eval_prefixes_matching_no == ["I lean toward "]
    # the reference's singular spellings give lists too (its nargs bug, item 18)
    b = hr.build_parser().parse_args(["--eval_prefix_matching_no", "X ", "Y ", "--eval_prefix_matching_yes", "Z "])
    assert b.eval_prefixes_matching_no == ["X ", "Y "] and b.eval_prefixes_matching_yes == ["Z "]


def persona_jsonl(path, n=16):
    with open(path, "w") as f:
        for i in range(n):
            yes = i % 4 != 3
            f.write(
                json.dumps(
                    {
                        "question": f'Is the following statement something you would say?\n"Statement {i}"',
                        "statement": f"Statement {i}",
                        "label_confidence": 0.9,
                        "answer_matching_behavior": " Yes" if yes else " No",
                        "answer_not_matching_behavior": " No" if yes else " Yes",
                    }
                )
                + "\n"
            )
    return path


def test_command_on_tiny_model(tmp_path, capsys):
    from safetensors.torch import load_file

    data = persona_jsonl(tmp_path / "mini_persona.jsonl")  # 12 "Yes" records
    argv = [
        "--model",
        "tiny-random-llama",
        "--dataset_path",
        str(data),
        "--num_train_samples",
        "6",
        "--num_test_samples",
        "3",
        "--batch_size",
        "4",
        "--output_dir",
        str(tmp_path / "out"),
        "--eval_prefix_matching_no",
        "I lean toward ",
        "Honestly, ",
    ]
    assert hr.main(argv) == 0
    out_dir = tmp_path / "out" / "tiny-random-llama_mini_persona"
    res = json.loads((out_dir / hr.RESULTS_FILE).read_text())
    assert {"config", "model", "sizes", "similarity", "max_margin", "eval_prefixes", "difference_norms"} <= set(res)
    s = res["sizes"]
    assert (s["num_train"], s["num_test"], s["hidden_size"], s["num_unseen_token_pairs"]) == (6, 3, 32, 4)
    assert s["train_seen"] == [6, 32] and s["train_unseen"] == [24, 32] and s["test_unseen"] == [12, 32]
    assert s["unseen_token_pairs"][0] == ["certainly", "not really"]
    assert res["config"]["eval_prefixes_matching_no"] == ["I lean toward ", "Honestly, "]
    assert len(res["eval_prefixes"]["train"]) == 6 and len(res["eval_prefixes"]["test"]) == 3
    for name in ("train_seen_vs_train_unseen", "train_seen_vs_test_unseen"):
        for kind in ("inner_product", "cosine"):
            assert set(res["similarity"][name][kind]) == set(hr.STAT_KEYS)
    assert res["similarity"]["train_seen_vs_train_unseen"]["cosine"]["count"] == 6 * 24
    assert res["similarity"]["train_seen_vs_test_unseen"]["cosine"]["count"] == 6 * 12
    mm = res["max_margin"]
    assert mm["status"] in {"separable", "not_separable", "solver_failed"}
    if mm["separable"]:
        assert mm["kkt"]["min_margin"] >= 1 - 1e-6 and mm["train_seen"]["frac_positive"] == 1.0
        assert set(mm["train_unseen"]) == {"margin", "cosine"} and mm["test_unseen"]["margin"]["count"] == 12
    tensors = load_file(out_dir / hr.TENSORS_FILE)
    assert tensors[hr.TRAIN_SEEN].shape == (6, 32)
    assert tensors[hr.TRAIN_UNSEEN].shape == (24, 32) and tensors[hr.TEST_UNSEEN].shape == (12, 32)
    assert (hr.MAX_MARGIN_W in tensors) == mm["separable"]
    assert not list(out_dir.glob(".*"))  # no temp files left behind
    assert "hidden-representation similarity" in capsys.readouterr().out

    assert res["prefix_controls"] is None

    # deterministic: a second run (with the prefix controls) gives the same differences
    assert hr.main(argv + ["--prefix_controls"]) == 0
    again = load_file(out_dir / hr.TENSORS_FILE)
    for k in (hr.TRAIN_SEEN, hr.TRAIN_UNSEEN, hr.TEST_UNSEEN):
        torch.testing.assert_close(again[k], tensors[k], atol=1e-6, rtol=1e-6)
    controls = json.loads((out_dir / hr.RESULTS_FILE).read_text())["prefix_controls"]
    assert set(controls) == {"swapped_prefixes", "same_prefix_yes", "same_prefix_no"}
    for variant, entry in controls.items():
        assert entry["test"]["similarity"]["cosine"]["count"] == 6 * 12
        assert again[f"train_{variant}_y_min_n_hidden_representations"].shape == (24, 32)
        assert again[f"test_{variant}_y_min_n_hidden_representations"].shape == (12, 32)
    assert "prefix controls" in capsys.readouterr().out


def test_command_reports_a_missing_dataset(tmp_path, capsys):
    assert (
        hr.main(
            [
                "--model",
                "tiny-random-llama",
                "--dataset_path",
                str(tmp_path / "nope.jsonl"),
                "--output_dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
