"""Length limits (max_length, max_prompt_length, over_length): what is dropped, what truncation
keeps (the prompt's end, the response's start, the template's tokens), the counts, the plan checks."""

import json

import pytest

import run_plan
from rm_exps.batching import LengthLimits, PairCollator, SharedPromptCollator, encode_pairs, pair_length, template_frame
from rm_exps.config import RunConfig
from rm_exps.models import load_tokenizer
from rm_exps.outputs import read_json
from rm_exps.plan import PlanError, build_runs
from rm_exps.run_data import encode_split


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny-random-llama")  # one token per character; <|user|> ... <eos><|assistant|>


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


LONG = {
    "prompt": "the beginning of a long question " + "and more " * 6 + "THE END?",
    "chosen": "START of the chosen answer " + "blah " * 10,
    "rejected": "START rejected " + "meh " * 8,
}


def test_truncation_keeps_the_prompt_end_the_response_start_and_the_end_of_turn(tokenizer):
    full = encode_pairs([LONG], tokenizer, "chat").examples[0]
    limits = LengthLimits(max_length=40, max_prompt_length=16, over_length="truncate")
    pairs = encode_pairs([LONG], tokenizer, "chat", limits=limits)
    (ex,) = pairs.examples
    assert pairs.length_counts.summary() == {"pairs": 1, "dropped": 0, "truncated": 1}
    assert len(ex["prompt_ids"]) == 16 and pair_length(ex) == 40
    frame = template_frame(tokenizer)
    head, tail = frame.prompt_head, frame.prompt_tail
    # the prompt keeps the template's head (<|user|>) and its end: the question's last words + generation prompt
    assert ex["prompt_ids"][:head] == full["prompt_ids"][:head]
    assert ex["prompt_ids"][head:] == full["prompt_ids"][-(16 - head) :]
    assert tokenizer.decode(ex["prompt_ids"][head:-tail]).endswith("THE END?")
    for side in ("chosen_ids", "rejected_ids"):  # each response: its start, then the end-of-turn suffix
        assert ex[side][-1] == tokenizer.eos_token_id == full[side][-1]
        assert ex[side][:-1] == full[side][: len(ex[side]) - 1]
        assert tokenizer.decode(ex[side]).startswith("START")
    # the token EX-RM reads (seq_end) is the end-of-turn token in both rows
    batch = PairCollator(tokenizer.pad_token_id)(pairs.examples)
    assert batch["input_ids"].flatten()[batch["seq_end"]].tolist() == [tokenizer.eos_token_id] * 2


def test_the_prompt_is_cut_further_only_when_the_responses_need_it(tokenizer):
    limits = LengthLimits(max_length=20, over_length="truncate")  # no prompt limit; the prompt is 80 tokens
    (ex,) = encode_pairs([LONG], tokenizer, "chat", limits=limits).examples
    frame = template_frame(tokenizer)
    # each response keeps its minimum (one content token + the end-of-turn), the prompt takes the rest
    assert [len(ex[k]) for k in ("chosen_ids", "rejected_ids")] == [frame.response_tail + 1] * 2
    assert len(ex["prompt_ids"]) == 20 - (frame.response_tail + 1)
    assert tokenizer.decode(ex["prompt_ids"]).endswith("THE END?" + tokenizer.eos_token + "<|assistant|>")


def test_drop_removes_exactly_the_long_pairs_and_counts_them(tokenizer):
    data = [{"prompt": f"q{i}", "chosen": "good " * i, "rejected": "bad"} for i in range(8)]
    lengths = encode_pairs(data, tokenizer, "chat").lengths()
    limit = sorted(lengths)[4]
    pairs = encode_pairs(data, tokenizer, "chat", limits=LengthLimits(max_length=limit))
    expected = [i for i, n in enumerate(lengths) if n <= limit]
    assert pairs.rows == expected and 0 < len(expected) < len(data)
    assert pairs.length_counts.summary() == {"pairs": 8, "dropped": 8 - len(expected), "truncated": 0}
    assert all(
        pairs.examples[k] == encode_pairs([data[i]], tokenizer, "chat").examples[0] for k, i in enumerate(expected)
    )  # kept pairs are untouched
    # evaluation order keeps each pair's source row (RewardBench subsets stay aligned)
    order = pairs.length_order()
    assert pairs.select(order).rows == [expected[k] for k in order]
    # a prompt limit drops the pairs with longer prompts
    data[3]["prompt"] = "a much longer prompt"
    pairs = encode_pairs(data, tokenizer, "chat", limits=LengthLimits(max_prompt_length=8))
    assert 3 not in pairs.rows and pairs.length_counts.dropped == 1


def test_share_prompt_limits_the_pair_row(tokenizer):
    pair = {"prompt": "q", "chosen": "twelve chars", "rejected": "ten chars!"}
    (full,) = encode_pairs([pair], tokenizer, "chat").examples
    limit = pair_length(full)  # prompt + the longer response fits; prompt + both does not
    assert pair_length(full, shared_prompt=True) > limit
    assert len(encode_pairs([pair], tokenizer, "chat", limits=LengthLimits(limit))) == 1
    shared = LengthLimits(limit, shared_prompt=True)
    assert len(encode_pairs([pair], tokenizer, "chat", limits=shared)) == 0
    truncated = encode_pairs(
        [pair], tokenizer, "chat", limits=LengthLimits(limit, over_length="truncate", shared_prompt=True)
    )
    (ex,) = truncated.examples
    assert pair_length(ex, shared_prompt=True) == limit and ex["prompt_ids"] == full["prompt_ids"]
    assert ex["chosen_ids"][-1] == ex["rejected_ids"][-1] == tokenizer.eos_token_id
    batch = SharedPromptCollator(tokenizer.pad_token_id)(truncated.examples)
    assert batch["input_ids"].shape[1] == limit
    assert batch["input_ids"].flatten()[batch["seq_end"]].tolist() == [tokenizer.eos_token_id] * 2


@pytest.mark.parametrize(
    "fmt, kept",
    [
        ("verification", "(Yes/No)?<|endoftext|><|assistant|>"),
        ("two_answers", "[The End of Assistant B's Answer]<|endoftext|>"),
        ("judge", "[The End of Assistant B's Answer]\n\n#Preferred:<|endoftext|><|assistant|>"),
    ],
)
def test_rows_with_the_question_templated_in_cut_their_answers(tokenizer, fmt, kept):
    (full,) = encode_pairs([LONG], tokenizer, fmt).examples
    limit = pair_length(full) - 25
    pairs = encode_pairs([LONG], tokenizer, fmt, limits=LengthLimits(limit, over_length="truncate"))
    (ex,) = pairs.examples
    assert pair_length(ex) <= limit and pairs.length_counts.truncated == 1
    for side in ("chosen_ids", "rejected_ids"):
        text = tokenizer.decode(ex["prompt_ids"] + ex[side])  # two_answers: the question is the prompt part
        assert text.endswith(kept) and "THE END?" in text and "START" in text  # the question stays whole
    # a limit below the template and question alone drops the pair
    assert len(encode_pairs([LONG], tokenizer, fmt, limits=LengthLimits(30, over_length="truncate"))) == 0


def test_no_limits_change_nothing(tokenizer):
    data = [LONG, {"prompt": "q", "chosen": "a", "rejected": "b"}]
    plain = encode_pairs(data, tokenizer, "chat")
    assert plain.length_counts is None and plain.rows == [0, 1]
    counts = {}
    assert encode_split("train", data, tokenizer, "chat", RunConfig(), counts).examples == plain.examples
    assert counts == {}  # no `length_limits` in the summary
    assert RunConfig(max_length=None, over_length="drop").hash() == RunConfig().hash()
    assert RunConfig(max_length=64).hash() != RunConfig().hash()


def test_a_split_left_without_pairs_is_an_error_naming_it(tokenizer):
    data = [{"prompt": "q", "chosen": "good", "rejected": "bad"}] * 3
    with pytest.raises(
        ValueError,
        match=r"drop every pair of split 'train' \(3 pairs; max_length 4 .*"
        r"shortest pair is 9 tokens.*over_length 'truncate'",
    ):
        encode_split("train", data, tokenizer, "chat", RunConfig(max_length=4), {})


@pytest.fixture
def dataset_dir(tmp_path):
    """train: 6 short pairs and 2 long ones; test: 3 short, 1 long."""
    folder = tmp_path / "pairs"
    folder.mkdir()
    for split, short, long in (("train", 6, 2), ("test", 3, 1)):
        rows = [{"prompt": f"q{i}", "chosen": "good", "rejected": "bad"} for i in range(short)]
        rows += [{"prompt": f"long {i}", "chosen": "good " * 20, "rejected": "bad"} for i in range(long)]
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return str(folder)


def plan(tmp_path, dataset_dir, options=None, **base):
    return {
        "configurations": [
            {
                "base_config": {
                    "experiment_name": "len_{over_length}",
                    "model": "tiny-random-llama",
                    "objective": "ex_rm",
                    "dataset_path": dataset_dir,
                    "outputs_dir": str(tmp_path / "out"),
                    "data_files_dir": str(tmp_path / "df"),
                    "epochs": 1,
                    "batch_size": 4,
                    "over_length": "drop",
                    **base,
                },
                "options": options or {},
            }
        ]
    }


def plan_errors(config_plan):
    with pytest.raises(PlanError) as e:
        build_runs(config_plan)
    return "\n".join(e.value.errors)


def test_plan_checks_the_limits(tmp_path, dataset_dir):
    errors = plan_errors(plan(tmp_path, dataset_dir, max_length=32, max_prompt_length=32))
    assert "max_prompt_length 32 must be below max_length 32" in errors
    errors = plan_errors(plan(tmp_path, dataset_dir, max_length=0))
    assert "field 'max_length'" in errors
    errors = plan_errors(plan(tmp_path, dataset_dir, over_length="cut"))
    assert "field 'over_length'" in errors
    errors = plan_errors(plan(tmp_path, dataset_dir, objective="gen_rm", max_length=64, max_prompt_length=16))
    assert "objective 'gen_rm' has no separate prompt" in errors
    (run,) = build_runs(plan(tmp_path, dataset_dir, max_length=64, max_prompt_length=16, over_length="truncate"))
    assert (run.config.max_length, run.config.max_prompt_length, run.config.over_length) == (64, 16, "truncate")


def test_a_limit_that_drops_every_train_pair_fails_the_run_with_the_numbers(tmp_path, dataset_dir):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan(tmp_path, dataset_dir, max_length=5)))
    assert run_plan.main(["--plan", str(path)]) == 1
    summary = read_json(tmp_path / "out" / "len_drop" / "summary.json")
    assert summary["status"] == "failed"
    assert "drop every pair of split 'train' (8 pairs; max_length 5" in summary["error"]
    assert "shortest pair is 10 tokens" in summary["error"]
    assert summary["length_limits"] == {"train": {"pairs": 8, "dropped": 8, "truncated": 0}}


def test_tiny_plan_records_the_counts_in_the_summary(tmp_path, dataset_dir):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan(tmp_path, dataset_dir, {"over_length": ["drop", "truncate"]}, max_length=40)))
    assert run_plan.main(["--plan", str(path)]) == 0
    dropped = read_json(tmp_path / "out" / "len_drop" / "summary.json")
    assert dropped["status"] == "completed"
    assert dropped["length_limits"] == {
        "train": {"pairs": 8, "dropped": 2, "truncated": 0},
        "eval train": {"pairs": 8, "dropped": 2, "truncated": 0},
        "eval test": {"pairs": 4, "dropped": 1, "truncated": 0},
    }
    assert dropped["num_train_samples"] == 8  # the sampled split; length_limits says what training kept
    truncated = read_json(tmp_path / "out" / "len_truncate" / "summary.json")
    assert truncated["status"] == "completed"
    assert truncated["length_limits"]["train"] == {"pairs": 8, "dropped": 0, "truncated": 2}
    assert truncated["length_limits"]["eval test"] == {"pairs": 4, "dropped": 0, "truncated": 1}
    assert "length limits (max_length 40" in (tmp_path / "out" / "len_truncate" / "run.log").read_text()


def test_truncation_that_cannot_fit_names_the_template_tokens(tokenizer):
    with pytest.raises(
        ValueError,
        match=r"split 'eval test' .* even truncated \(3 template tokens of the prompt, 1 of "
        r"each response and one content token of each part stay\)",
    ):
        encode_split("eval test", [LONG], tokenizer, "chat", RunConfig(max_length=5, over_length="truncate"), {})
