"""prepare_data.py rewrite: over real HTTP, with the real openai client, against tests/fake_openai_server."""

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
from fake_openai_server import FakeOpenAIServer, rewritten

from rm_exps.data import rewrite
from rm_exps.data.rewrite import TEMPLATES, overlap_stats, select_subsets, token_match_rate

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 4, 3  # of 6 / 4 rows: different sizes on purpose (the reference assumed equal ones)
TOTAL = 2 * (N_TRAIN + N_TEST)
COLUMNS = ["orig_index", "prompt", "chosen", "rejected", "orig_chosen", "orig_rejected"]


def _prepare_data_main():
    spec = importlib.util.spec_from_file_location("prepare_data_cli", REPO / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture
def source(tmp_path) -> Path:
    rows = lambda split, n: {
        "prompt": [f"{split} question {i}?" for i in range(n)],
        "chosen": [f"{split} good answer {i}" for i in range(n)],
        "rejected": [f"{split} bad answer {i}\nwith a second line" for i in range(n)],
    }
    path = tmp_path / "tiny_prefs"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows("train", 6)), "test": datasets.Dataset.from_dict(rows("test", 4))}
    ).save_to_disk(str(path))
    return path


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeOpenAIServer(model="fake-model-2025") as s:
        monkeypatch.setenv("OPENAI_BASE_URL", s.base_url)
        yield s


@pytest.fixture
def run(source, tmp_path, capsys):
    """run(*flags) -> (exit status, stdout, stderr) of `prepare_data.py rewrite` on the tiny dataset."""

    def run_(*flags, dataset=source):
        argv = [
            "--dataset",
            str(dataset),
            "--model",
            "fake-model",
            "--output_dir",
            str(tmp_path / "out"),
            "--num_train_samples",
            str(N_TRAIN),
            "--num_test_samples",
            str(N_TEST),
            "--tokenizer",
            "none",
            "--retry_base_delay",
            "0.01",
            *flags,
        ]
        if "--prompt_template" not in flags:
            argv += ["--kind", "paraphrase"]
        try:
            rewrite.rewrite_main(argv)
            code = 0
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return code, out.strip(), err

    return run_


def _datasets_in(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not p.name.startswith(".")] if folder.exists() else []


def _results(tmp_path) -> list[dict]:
    (path,) = (tmp_path / "out" / ".state").glob("*/results.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def _expected(text: str, kind: str = "paraphrase") -> str:
    return rewritten([{"role": "user", "content": TEMPLATES[kind].format(response=text)}])


def _check_dataset(folder: Path, source: Path) -> None:
    dd, src = datasets.load_from_disk(str(folder)), datasets.load_from_disk(str(source))
    expected_indices = select_subsets(src, N_TRAIN, N_TEST, 517)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        ds = dd[split]
        assert ds.column_names == COLUMNS and len(ds) == n
        assert ds.features["orig_index"].dtype == "int64"
        assert list(ds["orig_index"]) == list(expected_indices[split]["orig_index"]) == sorted(ds["orig_index"])
        for row in ds:
            original = src[split][row["orig_index"]]
            assert row["prompt"] == original["prompt"]
            assert (row["orig_chosen"], row["orig_rejected"]) == (original["chosen"], original["rejected"])
            assert row["chosen"] == _expected(original["chosen"])
            assert row["rejected"] == _expected(original["rejected"])


# ----------------------------------------------------------------------------- direct mode


def test_direct_end_to_end(server, source, tmp_path, capsys):
    out_dir = tmp_path / "out"
    argv = [
        "rewrite",
        "--dataset",
        str(source),
        "--kind",
        "paraphrase",
        "--model",
        "fake-model",
        "--output_dir",
        str(out_dir),
        "--num_train_samples",
        str(N_TRAIN),
        "--num_test_samples",
        str(N_TEST),
        "--tokenizer",
        "none",
    ]
    _prepare_data_main()(argv)  # through prepare_data.py's COMMANDS; base URL from OPENAI_BASE_URL
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert folder.parent == out_dir and folder.name.startswith("paraphrase_fake-model_tiny_prefs_")
    _check_dataset(folder, source)

    requests = server.chat_requests
    assert len(requests) == TOTAL
    assert all(r["model"] == "fake-model" and r["max_tokens"] == 512 for r in requests)
    content = requests[0]["messages"][0]["content"]
    assert "\nHere is the original text:\n" in content and "\\n" not in content  # real newlines
    config = json.loads((folder / "run_config.json").read_text())
    assert config["kind"] == "paraphrase" and config["dataset"] == str(source)
    assert config["num_train_samples"] == N_TRAIN and config["seed"] == 517
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["api_models"] == ["fake-model-2025"] and stats["token_overlap"] is None
    assert stats["num_rows"] == {"train": N_TRAIN, "test": N_TEST}

    _prepare_data_main()(argv)  # same spec: the saved folder is reused, nothing is sent
    assert capsys.readouterr().out.strip() == str(folder)
    assert len(server.chat_requests) == TOTAL


def test_resume_after_interruption_sends_only_missing(server, run, source, tmp_path, monkeypatch):
    append, calls = rewrite.ResultStore.append, []

    def crash_after_five(store, record):
        calls.append(record["custom_id"])
        if len(calls) > 5:
            raise KeyboardInterrupt  # the process dies after the 6th response, before recording it
        append(store, record)

    monkeypatch.setattr(rewrite.ResultStore, "append", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        run("--concurrency", "1")
    first = len(server.chat_requests)
    assert first in (6, 7) and len(_results(tmp_path)) == 5  # 7: the worker took the next one meanwhile
    assert not _datasets_in(tmp_path / "out")

    monkeypatch.setattr(rewrite.ResultStore, "append", append)
    recorded = {r["custom_id"] for r in _results(tmp_path)}
    code, out, _ = run()
    assert code == 0
    resent = sorted(r["messages"][0]["content"] for r in server.chat_requests[first:])
    assert resent == sorted(_message(cid, source) for cid in _all_ids(source) - recorded)  # TOTAL - 5 of them
    _check_dataset(Path(out), source)


def test_resume_after_sigkill(source, tmp_path, monkeypatch):
    """The real command, killed -9 mid-run: a rerun sends exactly the requests without a stored result."""

    def slow(messages):
        time.sleep(0.2)
        return rewritten(messages)

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeOpenAIServer(respond=slow) as server:
        argv = [
            "--dataset",
            str(source),
            "--kind",
            "paraphrase",
            "--model",
            "fake-model",
            "--output_dir",
            str(tmp_path / "out"),
            "--num_train_samples",
            str(N_TRAIN),
            "--num_test_samples",
            str(N_TEST),
            "--tokenizer",
            "none",
            "--base_url",
            server.base_url,
        ]
        proc = subprocess.Popen(
            [sys.executable, "prepare_data.py", "rewrite", *argv, "--concurrency", "2"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 180  # generous: the child imports torch and datasets first
            while time.monotonic() < deadline and proc.poll() is None:
                results = list((tmp_path / "out" / ".state").glob("*/results.jsonl"))
                if results and results[0].read_text().count("\n") >= 4:
                    break
                time.sleep(0.01)
        finally:
            proc.kill()
            proc.wait()
        recorded = {r["custom_id"] for r in _results(tmp_path)}
        assert 4 <= len(recorded) < TOTAL and not _datasets_in(tmp_path / "out")
        sent_before = len(server.chat_requests)

        rewrite.rewrite_main(argv)
        resent = sorted(r["messages"][0]["content"] for r in server.chat_requests[sent_before:])
        assert resent == sorted(_message(cid, source) for cid in _all_ids(source) - recorded)


def _all_ids(source: Path) -> set[str]:
    subsets = select_subsets(datasets.load_from_disk(str(source)), N_TRAIN, N_TEST, 517)
    return {
        rewrite.custom_id(split, i, column)
        for split, ds in subsets.items()
        for i in ds["orig_index"]
        for column in ("chosen", "rejected")
    }


def _message(cid: str, source: Path) -> str:
    split, index, column = cid.split("-")
    return TEMPLATES["paraphrase"].format(response=datasets.load_from_disk(str(source))[split][int(index)][column])


def test_torn_last_line_is_dropped(tmp_path):
    store = rewrite.ResultStore(tmp_path / "results.jsonl")
    store.append({"custom_id": "train-0-chosen", "content": "x"})
    with open(store.path, "a") as f:
        f.write('{"custom_id": "train-0-rej')  # killed mid-write
    assert list(store.load()) == ["train-0-chosen"]
    store.append({"custom_id": "train-0-rejected", "content": "y"})
    assert list(store.load()) == ["train-0-chosen", "train-0-rejected"]


def test_429_500_and_timeout_are_retried(server, run, source, caplog):
    server.inject(status=429, headers={"Retry-After": "0"})
    server.inject(status=500)
    server.inject(status=503, headers={"Retry-After-Ms": "10"})
    server.inject(delay=1.0, content="too late")  # longer than --timeout: the client gives up, we retry
    code, out, err = run("--concurrency", "1", "--timeout", "0.3")
    assert code == 0, err
    assert len(server.chat_requests) == TOTAL + 4
    retried = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert [m.split(":")[1].strip() for m in retried] == [
        "RateLimitError (HTTP 429)",
        "InternalServerError (HTTP 500)",
        "InternalServerError (HTTP 503)",
        "APITimeoutError",
    ]
    _check_dataset(Path(out), source)


def test_backoff_honours_retry_after(server):
    import openai

    delays = []
    client = openai.OpenAI(base_url=server.base_url, max_retries=0)
    call = lambda: client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    server.inject(status=429, headers={"Retry-After": "7"})
    server.inject(status=502)
    server.inject(status=502)
    reply = rewrite.call_with_retries(call, "hi", max_retries=3, base_delay=1.0, sleep=delays.append)
    assert reply.choices[0].message.content == "REWRITTEN: HI"
    assert delays[0] == 7.0 and 1.0 <= delays[1] < 2.0 and 2.0 <= delays[2] < 4.0  # server's, then 2**k, jittered

    server.inject(status=500, times=None)
    with pytest.raises(openai.InternalServerError):
        rewrite.call_with_retries(call, "hi", max_retries=2, base_delay=0.0, sleep=delays.append)
    server.clear_injections()
    server.inject(status=400)
    with pytest.raises(openai.BadRequestError):  # not retryable: raised at once
        rewrite.call_with_retries(call, "hi", max_retries=2, base_delay=0.0, sleep=delays.append)
    assert len(delays) == 5


def test_malformed_completion_fails_then_rerun_completes(server, run, source, tmp_path):
    src = datasets.load_from_disk(str(source))
    subsets = select_subsets(src, N_TRAIN, N_TEST, 517)
    i, j = subsets["train"]["orig_index"][1], subsets["test"]["orig_index"][0]
    server.inject(content="  ", match=src["train"][i]["chosen"])
    server.inject(body={"id": "x", "object": "chat.completion", "choices": []}, match=src["test"][j]["rejected"])
    server.inject(content=None, match=src["test"][j]["chosen"])
    code, out, err = run()
    assert code == 1 and out == ""
    assert f"train-{i}-chosen: malformed completion: empty message content" in err
    assert f"test-{j}-rejected: malformed completion: no choices" in err
    assert f"test-{j}-chosen: malformed completion: message content is NoneType" in err
    assert "3 of 14 requests failed" in err
    assert not _datasets_in(tmp_path / "out")

    text = src["train"][i]["chosen"]  # the server behaves now, but cuts this rewrite at max_tokens
    server.inject(
        body={
            "model": "m",
            "choices": [
                {"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": _expected(text)}}
            ],
        },
        match=text,
    )
    code, out, err = run()
    assert code == 0, err
    assert len(server.chat_requests) == TOTAL + 3
    _check_dataset(Path(out), source)
    assert json.loads((Path(out) / "stats.json").read_text())["truncated"] == [f"train-{i}-chosen"]


def test_unrecoverable_errors_are_listed_and_auth_errors_stop_at_once(server, run, source, tmp_path):
    text = datasets.load_from_disk(str(source))["train"][0]["chosen"]
    server.inject(status=503, times=None, match=text)
    code, _, err = run("--max_retries", "1", "--num_train_samples", "0")
    assert code == 1 and "train-0-chosen: InternalServerError (HTTP 503)" in err
    server.clear_injections()

    before = len(server.chat_requests)
    server.inject(status=401, times=None)
    code, _, err = run("--concurrency", "1")  # another spec: 14 requests to send
    assert code == 1 and "the API refused the request, stopping: AuthenticationError (HTTP 401)" in err
    assert len(server.chat_requests) - before <= 2  # the first, and at most one already taken by the worker


# ----------------------------------------------------------------------------- batch mode


def test_batch_submit_then_collect(server, run, source, tmp_path):
    code, out, err = run("--mode", "batch")
    assert code == 3 and out == "" and "submitted batch" in err and "--collect" in err
    (state,) = (tmp_path / "out" / ".state").iterdir()
    submitted = json.loads((state / "batch.json").read_text())
    src = datasets.load_from_disk(str(source))
    subsets = select_subsets(src, N_TRAIN, N_TEST, 517)
    assert submitted["indices"] == {split: list(ds["orig_index"]) for split, ds in subsets.items()}
    assert submitted["model"] == "fake-model" and submitted["template"] == TEMPLATES["paraphrase"]
    lines = [json.loads(line) for line in (state / "requests.jsonl").read_text().splitlines()]
    assert len(lines) == TOTAL and lines[0]["custom_id"] == f"train-{submitted['indices']['train'][0]}-chosen"
    assert {line["url"] for line in lines} == {"/v1/chat/completions"}
    uploads = [r for r in server.requests if r.path == "/v1/files"]
    assert len(uploads) == 1 and b'name="purpose"' in uploads[0].body and b"batch" in uploads[0].body

    assert run("--mode", "batch")[0] == 3  # already submitted: no second batch
    code, out, err = run("--mode", "batch", "--collect")  # a new invocation; the fake batch is validating
    assert code == 3 and "is validating" in err
    code, out, err = run("--mode", "batch", "--collect")
    assert code == 3 and "is in_progress" in err
    code, out, err = run("--mode", "batch", "--collect")
    assert code == 0, err
    _check_dataset(Path(out), source)
    assert len(server.batches) == 1 and not server.chat_requests  # no direct calls were made
    assert (state / f"batch-{submitted['batch_id']}.json").exists() and not (state / "batch.json").exists()


def test_batch_failed_lines_are_resubmitted_alone(server, run, source, tmp_path):
    src = datasets.load_from_disk(str(source))
    i = select_subsets(src, N_TRAIN, N_TEST, 517)["test"]["orig_index"][2]
    server.inject(content="", match=f"test-{i}-rejected")  # matched by custom_id inside the batch
    server.inject(status=400, match=f"test-{i}-chosen")
    code, out, err = run("--mode", "batch", "--wait", "--poll_interval", "0")
    assert code == 1
    assert f"test-{i}-rejected: malformed completion: empty message content" in err
    assert f"test-{i}-chosen: HTTP 400" in err
    assert not _datasets_in(tmp_path / "out")

    code, out, err = run("--mode", "batch", "--wait", "--poll_interval", "0")  # resubmits the two
    assert code == 0, err
    second = list(server.batches.values())[1]
    assert server.files[second["input_file_id"]]["content"].decode().count("custom_id") == 2
    _check_dataset(Path(out), source)


def test_batch_usage_and_api_errors(server, run):
    code, _, err = run("--mode", "batch", "--collect")
    assert code == 2 and "no batch is pending" in err
    server.inject(status=500, times=None, endpoint="/v1/files")
    code, _, err = run("--mode", "batch", "--max_retries", "1")
    assert code == 1 and "upload requests.jsonl failed: InternalServerError (HTTP 500)" in err
    assert not server.batches


# ----------------------------------------------------------------------------- templates and rows


def test_custom_template(server, run, tmp_path):
    code, _, err = run("--prompt_template", "Rewrite this text.")
    assert code == 2 and "must contain the placeholder {response}" in err
    code, _, err = run("--prompt_template", "Rewrite {response} as {style}")
    assert code == 2 and "{{" in err
    assert not server.requests

    code, out, _ = run("--prompt_template", 'Say it in JSON {{"text": ...}}:\n{response}')
    assert code == 0 and Path(out).name.startswith("custom_fake-model_")
    assert server.chat_requests[0]["messages"][0]["content"].startswith('Say it in JSON {"text": ...}:\n')


def test_rows_match_the_reference_selection():
    """Seed 517 on 2000/200 rows picks the reference's shipped train rows 23, 59, 84, ... and all test rows."""
    split = lambda n: datasets.Dataset.from_dict({c: [""] * n for c in ("prompt", "chosen", "rejected")})
    subsets = select_subsets(datasets.DatasetDict({"train": split(2000), "test": split(200)}), 200, 200, 517)
    assert list(subsets["train"]["orig_index"])[:5] == [23, 59, 84, 88, 92]
    assert list(subsets["test"]["orig_index"]) == list(range(200))


# ----------------------------------------------------------------------------- token overlap


def test_token_match_rate_by_hand():
    assert token_match_rate([1, 2, 2, 3], [2, 4]) == 2 / 8
    assert token_match_rate([1, 2, 2, 3], [1, 2, 2, 3]) == (1 + 4 + 1) / 16
    assert token_match_rate([1, 2], [3]) == 0.0 and token_match_rate([], [1]) == 0.0


def test_overlap_stats_end_to_end_with_a_tokenizer(tmp_path, monkeypatch, capsys):
    """tiny-random-llama's tokenizer is byte-level, so lowercase letters are one token each."""
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    rows = {"train": [("p0", "aab", "cd"), ("p1", "ab", "b")], "test": [("p2", "a", "b")]}
    source = tmp_path / "letters"
    datasets.DatasetDict(
        {s: datasets.Dataset.from_dict(dict(zip(("prompt", "chosen", "rejected"), zip(*r)))) for s, r in rows.items()}
    ).save_to_disk(str(source))
    with FakeOpenAIServer(respond=lambda messages: "ab") as server:
        rewrite.rewrite_main(
            [
                "--dataset",
                str(source),
                "--kind",
                "translate_french",
                "--model",
                "m",
                "--base_url",
                server.base_url,
                "--output_dir",
                str(tmp_path / "out"),
                "--num_train_samples",
                "0",
                "--num_test_samples",
                "0",
                "--tokenizer",
                "tiny-random-llama",
            ]
        )
    folder = Path(capsys.readouterr().out.strip())
    overlap = json.loads((folder / "stats.json").read_text())["token_overlap"]
    # train: rewrite "ab" vs aab 3/6, cd 0, ab 2/4, b 1/2; self: aab 5/9, cd 2/4, ab 2/4, b 1;
    # next row: aab~ab 3/6, ab~aab 3/6, cd~b 0, b~cd 0
    assert overlap["train"]["rewritten_vs_original"] == pytest.approx((0.5 + 0 + 0.5 + 0.5) / 4)
    assert overlap["train"]["original_vs_itself"] == pytest.approx((5 / 9 + 0.5 + 0.5 + 1) / 4)
    assert overlap["train"]["original_vs_other_original"] == pytest.approx(0.25)
    assert overlap["train"]["mean_tokens"] == {"chosen": 2, "rejected": 2, "orig_chosen": 2.5, "orig_rejected": 1.5}
    assert overlap["test"]["rewritten_vs_original"] == pytest.approx(0.5)
    assert overlap["test"]["original_vs_itself"] == pytest.approx(1.0)
    assert overlap["test"]["original_vs_other_original"] is None


def test_overlap_stats_with_a_plain_encoder():
    dd = datasets.DatasetDict(
        {
            "test": datasets.Dataset.from_dict(
                {"chosen": ["x y"], "rejected": ["z"], "orig_chosen": ["x x y"], "orig_rejected": ["z"]}
            )
        }
    )
    stats = overlap_stats(dd, str.split)["test"]
    assert stats["rewritten_vs_original"] == pytest.approx((3 / 6 + 1) / 2)
    assert stats["original_vs_itself"] == pytest.approx((5 / 9 + 1) / 2)


def test_building_the_dataset_names_every_response_without_a_result():
    subsets = {
        "train": datasets.Dataset.from_dict({"orig_index": [3], "prompt": ["p"], "chosen": ["c"], "rejected": ["r"]})
    }
    with pytest.raises(rewrite.RewriteError) as info:
        rewrite.build_rewritten_dataset(subsets, {"train-3-chosen": {"content": "C"}})
    assert info.value.failures == {"train-3-rejected": "no result"}


# ----------------------------------------------------------------------------- the `rewritten` recipe


def test_rewritten_recipe_rewrites_its_base_through_the_api_and_is_reused(source, server, tmp_path):
    """A plan can name a rewritten dataset as a recipe: prepared once over the API, then read from disk."""
    from rm_exps.data.prepare import prepare_dataset

    spec = {
        "name": "rewritten",
        "base": str(source),
        "kind": "translate_french",
        "model": "fake-model",
        "num_train_samples": N_TRAIN,
        "num_test_samples": N_TEST,
    }
    folder = prepare_dataset(spec, data_dir=str(tmp_path / "data"))
    dd = datasets.load_from_disk(str(folder))
    assert {s: len(d) for s, d in dd.items()} == {"train": N_TRAIN, "test": N_TEST}
    row = dd["test"][0]
    assert row["chosen"] == _expected(row["orig_chosen"], "translate_french")
    assert set(COLUMNS) <= set(dd["test"].column_names)
    sent = len(server.chat_requests)
    assert sent == TOTAL
    assert prepare_dataset(spec, data_dir=str(tmp_path / "data")) == folder  # cached: no new request
    assert len(server.chat_requests) == sent


def test_rewritten_recipe_errors_before_any_request(source, monkeypatch, tmp_path):
    from rm_exps.data.prepare import api_credentials_error, validate_recipe

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    spec = {"name": "rewritten", "base": {"name": "ultrafeedback"}}
    assert validate_recipe(spec) is None
    assert "set OPENAI_API_KEY" in api_credentials_error(spec, str(tmp_path))
    assert api_credentials_error({"name": "rewritten", "source": str(source)}, str(tmp_path)) is None
    assert "give `base`" in validate_recipe({"name": "rewritten"})
    assert "did you mean 'translate_spanish'" in validate_recipe(
        {"name": "rewritten", "source": "x", "kind": "translate_spansh"}
    )
    assert "{response}" in validate_recipe(
        {"name": "rewritten", "base": "x", "kind": "custom", "prompt_template": "Rewrite this"}
    )
    assert "base: unknown dataset" in validate_recipe({"name": "rewritten", "base": {"name": "ultrafedback"}})


def test_rewritten_recipe_from_source_needs_the_original_columns(source, tmp_path):
    from rm_exps.data.errors import DatasetError
    from rm_exps.data.prepare import prepare_dataset

    with pytest.raises(DatasetError, match="orig_index"):
        prepare_dataset({"name": "rewritten", "source": str(source)}, data_dir=str(tmp_path / "data"))
