"""Rewrite the responses of a preference dataset with a chat model: paraphrases and translations (§6.5).

The token-level-shift experiments evaluate reward models on responses whose meaning is kept but
whose tokens change. This module builds those datasets from a prepared preference DatasetDict:

1. Pick the rows: one torch.Generator seeded with `seed` draws train then test indices
   (`preference.subsample`, sorted; n_train and n_test independent). Like the reference, except
   that a split taken whole (n <= 0 or n >= its length) draws nothing from the generator.
2. Ask an OpenAI-compatible chat model to rewrite every chosen and rejected response, one request
   per response, with custom_id "{split}-{orig_index}-{chosen|rejected}":
   * mode "direct": chat completions, `concurrency` at a time, retried with exponential backoff;
   * mode "batch": the OpenAI Batch API; submitting and collecting can be separate invocations.
   Each finished request is appended (and fsynced) to `results.jsonl` in the state dir, shared by
   both modes, so an interrupted or partly failed run resumes by sending only what is missing.
3. Build the DatasetDict (orig_index int64, prompt, chosen, rejected = rewritten, orig_chosen,
   orig_rejected), compute token-overlap statistics, and save it atomically (temp folder + rename)
   with run_config.json and stats.json to `{output_dir}/{kind}_{model}_{basename(dataset)}_{hash8}`.

Fixed relative to the reference (§10 item 17): batches are polled (or collected later, with a
distinct exit status while pending); results are matched by custom_id, so n_train != n_test works;
the submission state is JSON, not a pickle; the built-in prompts contain real newlines; a missing
or malformed completion fails the run, naming its ids, instead of producing a dataset with holes.

The retry and response-checking helpers live in rm_exps.chat_api (shared with the agentic verifiers).
The API key and base URL come from OPENAI_API_KEY / OPENAI_BASE_URL (the openai client's own
variables); --base_url overrides the latter. `openai` is imported only when a request is made.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import datasets
import torch

from rm_exps.chat_api import (
    FATAL_STATUS,
    MalformedCompletion,
    call_with_retries,
    completion_content,
    create_chat_completion,
)
from rm_exps.chat_api import (
    short_error as _short,
)
from rm_exps.chat_api import (
    status_code as _status,
)
from rm_exps.data.errors import DatasetError
from rm_exps.data.local import is_saved, save_atomically
from rm_exps.data.preference import load_preference_dataset, subsample
from rm_exps.outputs import write_json_atomic
from rm_exps.progress import quiet_library_output

log = logging.getLogger(__name__)

TEMPLATES = {  # the reference README's prompts, with real newlines
    "paraphrase": (
        "I will provide a text. Please rewrite it so that the meaning remains the same, but the wording "
        "overlaps with the original text as little as possible. Aim to minimize word and phrase overlap "
        "while preserving all key information and nuance. Output only the rewritten text and nothing else.\n"
        "Here is the original text:\n{response}\nRewritten version:\n"
    ),
    "translate_french": (
        "I will provide a text in English. Please translate it to French while ensuring that the meaning "
        "remains the same. Output only the translated text and nothing else.\n"
        "Here is the original text:\n{response}\nTranslated version:\n"
    ),
    "translate_spanish": (
        "I will provide a text in English. Please translate it to Spanish while ensuring that the meaning "
        "remains the same. Output only the translated text and nothing else.\n"
        "Here is the original text:\n{response}\nTranslated version:\n"
    ),
}
CUSTOM_KIND = "custom"
SPLITS = ("train", "test")
FIELDS = ("chosen", "rejected")
CHAT_ENDPOINT = "/v1/chat/completions"
BATCH_TERMINAL = ("completed", "failed", "expired", "cancelled")
EXIT_FAILED, EXIT_USAGE, EXIT_PENDING = 1, 2, 3


class RewriteError(RuntimeError):
    """Some requests have no usable result. `failures` maps custom_id -> reason."""

    def __init__(self, message: str, failures: dict[str, str] | None = None):
        self.failures = dict(sorted((failures or {}).items()))
        lines = [f"  {cid}: {reason}" for cid, reason in list(self.failures.items())[:50]]
        if len(self.failures) > 50:
            lines.append(f"  ... and {len(self.failures) - 50} more")
        super().__init__("\n".join([message, *lines]))


class BatchPending(RuntimeError):
    """The batch is submitted but not finished; collect it later with --collect."""


# ----------------------------------------------------------------------------- what to rewrite


@dataclass(frozen=True)
class RewriteSpec:
    """Everything that determines the rewritten dataset (hashed into its folder name).

    Args:
        dataset: prepared preference DatasetDict (train and test splits), stored as an absolute path.
        template: user-message template; "{response}" is replaced by the response (str.format, so
            literal braces are written "{{" and "}}").
        kind: "paraphrase", "translate_french", "translate_spanish" or "custom"; names the folder.
        model: chat model name as sent to the API.
        num_train_samples / num_test_samples: rows rewritten per split; <= 0 means all.
        seed: seeds the generator that picks the rows.
        max_tokens: completion token limit of each request.
    """

    dataset: str
    template: str
    kind: str
    model: str
    num_train_samples: int = 200
    num_test_samples: int = 200
    seed: int = 517
    max_tokens: int = 512

    def config(self) -> dict:
        return asdict(self)

    def folder_name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode()).hexdigest()[:8]
        model = re.sub(r"[^A-Za-z0-9_.\-]", "-", self.model)
        return f"{self.kind}_{model}_{Path(self.dataset).name}_{digest}"


def resolve_template(kind: str | None, template: str | None) -> tuple[str, str]:
    """(kind, template) from a built-in kind or a custom template; DatasetError if unusable."""
    if (kind is None) == (template is None):
        raise DatasetError("give exactly one of a kind (" + ", ".join(TEMPLATES) + ") or a prompt template")
    if kind is not None:
        if kind not in TEMPLATES:
            raise DatasetError(f"unknown rewrite kind {kind!r}; known: {', '.join(TEMPLATES)}")
        return kind, TEMPLATES[kind]
    if "{response}" not in template:
        raise DatasetError(
            "the prompt template must contain the placeholder {response}, "
            f"which is replaced by the text to rewrite; got {template!r}"
        )
    try:
        template.format(response="")
    except (KeyError, IndexError, ValueError) as e:
        raise DatasetError(
            f"the prompt template is not a valid format string ({e!r}); "
            "its only field is {response}, write literal braces as {{ and }}"
        ) from None
    if "\\n" in template and "\n" not in template:
        log.warning(
            "the prompt template contains a literal backslash-n and no newline; "
            "in bash, write newlines with $'...' quoting"
        )
    return CUSTOM_KIND, template


def select_subsets(dd: datasets.DatasetDict, num_train: int, num_test: int, seed: int) -> dict[str, datasets.Dataset]:
    """Split -> the chosen rows (prompt, chosen, rejected, orig_index), in increasing orig_index.

    One generator seeded with `seed` draws train then test (the reference's stream; see module doc).
    """
    missing = [s for s in SPLITS if s not in dd]
    if missing:
        raise DatasetError(f"dataset has no {' or '.join(missing)} split (splits: {', '.join(dd)})")
    generator = torch.Generator().manual_seed(seed)
    subsets = {}
    for split, n in zip(SPLITS, (num_train, num_test)):
        ds = dd[split].select_columns(["prompt", "chosen", "rejected"])
        ds = ds.add_column("orig_index", list(range(len(ds))))
        subsets[split] = subsample(ds, n, generator, sort=True)
    return subsets


def custom_id(split: str, orig_index: int, column: str) -> str:
    return f"{split}-{orig_index}-{column}"


def build_requests(subsets: dict[str, datasets.Dataset], spec: RewriteSpec) -> dict[str, dict]:
    """custom_id -> chat-completions request body, one per (row, field), train then test."""
    requests = {}
    for split, ds in subsets.items():
        for row in ds:
            for column in FIELDS:
                requests[custom_id(split, row["orig_index"], column)] = {
                    "model": spec.model,
                    "max_tokens": spec.max_tokens,
                    "messages": [{"role": "user", "content": spec.template.format(response=row[column])}],
                }
    return requests


# ----------------------------------------------------------------------------- results


def result_record(cid: str, body: dict) -> dict:
    """The line stored in results.jsonl for a successful response body (MalformedCompletion if not)."""
    content = completion_content(body)
    return {
        "custom_id": cid,
        "content": content,
        "model": body.get("model"),
        "finish_reason": body["choices"][0].get("finish_reason"),
    }


class ResultStore:
    """Append-only JSONL of finished requests, one {"custom_id", "content", ...} per line.

    Each line is flushed and fsynced before `append` returns, so a result is paid for at most once
    even if the process is killed. A torn last line (killed mid-write) is dropped by `load`.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def load(self) -> dict[str, dict]:
        """custom_id -> record of every complete line (the last record wins)."""
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # torn write: cut it so the next append starts clean
            keep = data.rfind(b"\n") + 1
            log.warning("%s: dropping an incomplete last line (%d bytes)", self.path, len(data) - keep)
            with open(self.path, "r+b") as f:
                f.truncate(keep)
            data = data[:keep]
        records = (json.loads(line) for line in data.decode().splitlines() if line.strip())
        return {r["custom_id"]: r for r in records}

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def build_rewritten_dataset(subsets: dict[str, datasets.Dataset], results: dict[str, dict]) -> datasets.DatasetDict:
    """The output DatasetDict; RewriteError naming the ids that have no result."""
    wanted = [
        custom_id(split, i, column) for split, ds in subsets.items() for i in ds["orig_index"] for column in FIELDS
    ]
    missing = {cid: "no result" for cid in wanted if cid not in results}
    if missing:
        raise RewriteError(f"{len(missing)} responses have no rewrite:", missing)
    features = datasets.Features(
        {
            "orig_index": datasets.Value("int64"),
            **{c: datasets.Value("string") for c in ("prompt", "chosen", "rejected", "orig_chosen", "orig_rejected")},
        }
    )
    out = {}
    for split, ds in subsets.items():
        rows = [
            {
                "orig_index": row["orig_index"],
                "prompt": row["prompt"],
                **{f: results[custom_id(split, row["orig_index"], f)]["content"] for f in FIELDS},
                "orig_chosen": row["chosen"],
                "orig_rejected": row["rejected"],
            }
            for row in ds
        ]
        out[split] = datasets.Dataset.from_list(rows, features=features)
    return datasets.DatasetDict(out)


# ----------------------------------------------------------------------------- token overlap


def token_match_rate(a: Sequence, b: Sequence) -> float:
    """Probability that a token drawn uniformly from `a` equals a token drawn uniformly from `b`.

    Equals #{(i, j) : a[i] == b[j]} / (len(a) * len(b)) = sum_t p_a(t) * p_b(t), where p_x(t) is
    the frequency of token t in x: the reference's "token overlap" (an all-pairs comparison, not a
    position-wise one, so it is insensitive to order). 0.0 if either sequence is empty.
    Example: a = [1, 2, 2, 3], b = [2, 4] -> 2 / 8 = 0.25; a with itself -> (1 + 4 + 1) / 16 = 0.375.
    """
    if not a or not b:
        return 0.0
    count_a, count_b = Counter(a), Counter(b)
    return sum(n * count_b[t] for t, n in count_a.items()) / (len(a) * len(b))


def overlap_stats(dd: datasets.DatasetDict, encode: Callable[[str], Sequence]) -> dict[str, dict]:
    """Per split, means over its rows and both fields (chosen, rejected) of `token_match_rate`:

    * rewritten_vs_original: original response vs its rewrite (the quantity of interest);
    * original_vs_itself: original vs itself, the reference's baseline (its collision rate);
    * original_vs_other_original: original vs the same field's original of the next row
      (cyclically), the level between unrelated responses; None with a single row.
    Also the mean token counts of the four response columns. `encode`: text -> token ids.
    """
    stats = {}
    for split, ds in dd.items():
        tokens = {c: [encode(t) for t in ds[c]] for c in ("chosen", "rejected", "orig_chosen", "orig_rejected")}
        pairs = {"rewritten_vs_original": [], "original_vs_itself": [], "original_vs_other_original": []}
        n = len(ds)
        for column in FIELDS:
            orig, new = tokens["orig_" + column], tokens[column]
            for i in range(n):
                pairs["rewritten_vs_original"].append(token_match_rate(orig[i], new[i]))
                pairs["original_vs_itself"].append(token_match_rate(orig[i], orig[i]))
                if n > 1:
                    pairs["original_vs_other_original"].append(token_match_rate(orig[i], orig[(i + 1) % n]))
        stats[split] = {key: (sum(v) / len(v) if v else None) for key, v in pairs.items()}
        stats[split]["mean_tokens"] = {c: sum(map(len, t)) / max(n, 1) for c, t in tokens.items()}
    return stats


def tokenizer_encoder(name: str) -> Callable[[str], list[int]] | None:
    """text -> token ids (no special tokens) with the harness tokenizer `name`; None for "none"."""
    if name.lower() == "none":
        return None
    from rm_exps.models import load_tokenizer

    tokenizer = load_tokenizer(name)
    return lambda text: tokenizer.encode(text, add_special_tokens=False)


# ----------------------------------------------------------------------------- API calls


@dataclass
class ClientOptions:
    """How to talk to the API (none of it changes the dataset)."""

    base_url: str | None = None
    timeout: float = 120.0
    max_retries: int = 6
    retry_base_delay: float = 1.0
    concurrency: int = 8

    def client(self):
        """An openai.OpenAI client with its own retries off (ours are `call_with_retries`)."""
        import openai

        try:
            return openai.OpenAI(base_url=self.base_url, timeout=self.timeout, max_retries=0)
        except openai.OpenAIError as e:  # e.g. OPENAI_API_KEY not set
            raise DatasetError(f"cannot create the OpenAI client: {e}") from None

    def retrying(self, call: Callable[[], Any], what: str) -> Any:
        return call_with_retries(call, what, self.max_retries, self.retry_base_delay)

    def batch_call(self, call: Callable[[], Any], what: str) -> Any:
        """`retrying`, with a final API error turned into a RewriteError saying what failed."""
        import openai

        try:
            return self.retrying(call, what)
        except openai.APIError as e:
            raise RewriteError(f"{what} failed: {_short(e)}") from e


def _fatal(error: BaseException) -> RewriteError:
    return RewriteError(f"the API refused the request, stopping: {_short(error)}")


def rewrite_direct(requests: dict[str, dict], store: ResultStore, options: ClientOptions) -> dict[str, str]:
    """Send `requests` (custom_id -> body) as chat completions, `options.concurrency` at a time.

    Each success is appended to `store` as soon as it arrives. Returns custom_id -> reason for the
    requests that failed (malformed completion, or an error that outlived the retries); raises
    RewriteError at once on 401/403/404 (bad key, no access, unknown model).
    """
    import openai

    client = options.client()

    def send(cid: str) -> None:
        body = options.retrying(lambda: create_chat_completion(client, requests[cid]), cid)
        store.append(result_record(cid, body))

    failures = {}
    pool = ThreadPoolExecutor(max(1, options.concurrency), thread_name_prefix="rewrite")
    try:
        futures = {pool.submit(send, cid): cid for cid in requests}
        for done, future in enumerate(as_completed(futures), 1):
            cid = futures[future]
            try:
                future.result()
            except MalformedCompletion as e:
                failures[cid] = f"malformed completion: {e}"
            except openai.APIError as e:
                if _status(e) in FATAL_STATUS:
                    raise _fatal(e) from e
                failures[cid] = _short(e)
            if done % 50 == 0 or done == len(futures):
                log.info("rewrote %d/%d (%d failed)", done, len(futures), len(failures))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return failures


# ----------------------------------------------------------------------------- state dir


class RunState:
    """The state dir of one rewrite: config.json, results.jsonl and, while a batch is out, batch.json."""

    def __init__(self, folder: Path, config: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        config_path = self.folder / "config.json"
        if config_path.exists():
            stored = json.loads(config_path.read_text())
            if stored != config:
                raise DatasetError(
                    f"state dir {self.folder} belongs to another rewrite ({stored}); use another --state_dir"
                )
        else:
            write_json_atomic(config_path, config)
        self.results = ResultStore(self.folder / "results.jsonl")
        self.batch_path = self.folder / "batch.json"

    def pending_batch(self) -> dict | None:
        return json.loads(self.batch_path.read_text()) if self.batch_path.exists() else None


# ----------------------------------------------------------------------------- Batch API


def submit_batch(
    requests: dict[str, dict], state: RunState, indices: dict[str, list[int]], spec: RewriteSpec, options: ClientOptions
) -> dict:
    """Upload `requests` as a Batch API job and record it in state/batch.json; returns that record."""
    client = options.client()
    path = state.folder / "requests.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for cid, body in requests.items():
            f.write(
                json.dumps({"custom_id": cid, "method": "POST", "url": CHAT_ENDPOINT, "body": body}, ensure_ascii=False)
                + "\n"
            )

    def upload():
        with open(path, "rb") as f:
            return client.files.create(file=f, purpose="batch")

    input_file = options.batch_call(upload, "upload requests.jsonl")
    batch = options.batch_call(
        lambda: client.batches.create(
            input_file_id=input_file.id,
            endpoint=CHAT_ENDPOINT,
            completion_window="24h",
            metadata={"description": f"rm_exps rewrite {spec.folder_name()}"},
        ),
        "create batch",
    )
    record = {
        "batch_id": batch.id,
        "input_file_id": input_file.id,
        "custom_ids": list(requests),
        "indices": indices,
        "model": spec.model,
        "template": spec.template,
        "submitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_json_atomic(state.batch_path, record)
    log.info("submitted batch %s with %d requests (input file %s)", batch.id, len(requests), input_file.id)
    return record


def parse_batch_line(line: str) -> tuple[str, dict | None, str | None]:
    """(custom_id, results.jsonl record, None) for a successful Batch API output line, else
    (custom_id, None, reason)."""
    item = json.loads(line)
    cid = item.get("custom_id")
    response = item.get("response") or {}
    if item.get("error") or response.get("status_code") != 200:
        body = response.get("body")
        message = item.get("error") or (body.get("error") if isinstance(body, dict) else None) or body
        return cid, None, f"HTTP {response.get('status_code')}: {message}"
    try:
        return cid, result_record(cid, response.get("body")), None
    except MalformedCompletion as e:
        return cid, None, f"malformed completion: {e}"


def collect_batch(state: RunState, options: ClientOptions, wait: bool, poll_interval: float) -> dict[str, str]:
    """Store the results of the pending batch; returns custom_id -> reason for its failed requests.

    If the batch has not finished: BatchPending, or with `wait`, poll every `poll_interval` seconds.
    Once it has finished (completed, expired, cancelled: whatever output exists is kept; failed:
    RewriteError with the batch's errors), batch.json is renamed to batch-{id}.json, so the next
    submit sends only what is still missing.
    """
    submitted = state.pending_batch()
    client = options.client()
    batch_id = submitted["batch_id"]
    while True:
        batch = options.batch_call(lambda: client.batches.retrieve(batch_id), f"retrieve batch {batch_id}")
        counts = batch.request_counts
        progress = f"{counts.completed}/{counts.total} done, {counts.failed} failed" if counts else "no counts yet"
        if batch.status in BATCH_TERMINAL:
            break
        if not wait:
            raise BatchPending(
                f"batch {batch_id} is {batch.status} ({progress}); rerun with --collect later, or add --wait to poll"
            )
        log.info("batch %s is %s (%s); next check in %gs", batch_id, batch.status, progress, poll_interval)
        time.sleep(poll_interval)
    log.info("batch %s is %s (%s)", batch_id, batch.status, progress)
    failures = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if not file_id:
            continue
        text = options.batch_call(lambda file_id=file_id: client.files.content(file_id).text, f"download {file_id}")
        for line in text.splitlines():
            if line.strip():
                cid, record, reason = parse_batch_line(line)
                if record is not None:
                    state.results.append(record)
                else:
                    failures[cid] = reason
    done = state.results.load()
    for cid in submitted["custom_ids"]:
        if cid not in done and cid not in failures:
            failures[cid] = f"no result in batch {batch_id} (status {batch.status})"
    state.batch_path.rename(state.folder / f"batch-{batch_id}.json")
    if batch.status == "failed":
        errors = [getattr(e, "message", e) for e in (getattr(batch.errors, "data", None) or [])]
        raise RewriteError(f"batch {batch_id} failed: {errors or 'no details'}", failures)
    return failures


# ----------------------------------------------------------------------------- the command


@dataclass
class RunOptions:
    """How to run a rewrite (none of it changes the dataset).

    Args:
        mode: "direct" (chat completions) or "batch" (Batch API).
        output_dir: folder the dataset folder goes into.
        state_dir: resume state; default {output_dir}/.state/{dataset folder name}.
        collect: batch mode: collect the submitted batch instead of submitting.
        wait: batch mode: poll until the batch finishes (after submitting or when collecting).
        poll_interval: seconds between polls.
        tokenizer: harness tokenizer for the overlap statistics, or "none".
    """

    mode: str = "direct"
    output_dir: str = "data_files/rewritten"
    state_dir: str | None = None
    collect: bool = False
    wait: bool = False
    poll_interval: float = 60.0
    tokenizer: str = "smollm2-135m-instruct"
    client: ClientOptions = field(default_factory=ClientOptions)


def _fetch(
    spec: RewriteSpec, requests: dict[str, dict], state: RunState, indices: dict[str, list[int]], options: RunOptions
) -> None:
    """Get a stored result for every request, by the chosen mode; raise if some cannot be had now."""
    missing = {cid: body for cid, body in requests.items() if cid not in state.results.load()}
    pending = state.pending_batch()
    if options.mode == "direct":
        if options.collect:
            raise DatasetError("--collect is for --mode batch")
        if pending:
            raise DatasetError(
                f"batch {pending['batch_id']} is pending for this rewrite: collect it first (--mode batch --collect)"
            )
        log.info("%d of %d requests to send", len(missing), len(requests))
        failures = rewrite_direct(missing, state.results, options.client) if missing else {}
    elif pending:
        if pending["indices"] != indices:
            raise DatasetError(f"{state.batch_path} was submitted for other rows than the dataset now gives")
        if not options.collect and not options.wait:
            raise BatchPending(f"batch {pending['batch_id']} was already submitted; rerun with --collect")
        failures = collect_batch(state, options.client, options.wait, options.poll_interval)
    elif not missing:
        failures = {}
    elif options.collect:
        raise DatasetError(
            f"no batch is pending in {state.folder} and {len(missing)} requests have no result; "
            "rerun without --collect to submit them"
        )
    else:
        submitted = submit_batch(missing, state, indices, spec, options.client)
        if not options.wait:
            raise BatchPending(
                f"submitted batch {submitted['batch_id']} ({len(missing)} requests); "
                "rerun the same command with --collect [--wait] to build the dataset"
            )
        failures = collect_batch(state, options.client, True, options.poll_interval)
    if failures:
        raise RewriteError(
            f"{len(failures)} of {len(requests)} requests failed; their results are missing, "
            "rerun the same command to retry just those:",
            failures,
        )


def rewrite_dataset(spec: RewriteSpec, options: RunOptions) -> Path:
    """Build (or reuse) the rewritten dataset folder of `spec` and return it.

    Raises:
        DatasetError: bad dataset, template or state dir. RewriteError: requests without a usable
        result (the message lists their custom_ids). BatchPending: batch mode, not finished yet.
    """
    config = spec.config()
    folder = Path(options.output_dir) / spec.folder_name()
    if is_saved(folder, config):
        log.info("reusing rewritten dataset %s", folder)
        return folder
    if folder.exists():
        raise DatasetError(
            f"{folder} exists but does not hold this rewrite (run_config.json missing or "
            "different); delete it to rebuild"
        )
    if options.tokenizer.lower() != "none":
        from rm_exps.models import check_model_name

        problem = check_model_name(options.tokenizer)
        if problem:
            raise DatasetError(f"--tokenizer: {problem}")
    subsets = select_subsets(
        load_preference_dataset(spec.dataset), spec.num_train_samples, spec.num_test_samples, spec.seed
    )
    indices = {split: list(ds["orig_index"]) for split, ds in subsets.items()}
    requests = build_requests(subsets, spec)
    state = RunState(Path(options.state_dir or Path(options.output_dir) / ".state" / folder.name), config)
    _fetch(spec, requests, state, indices, options)

    results = {cid: record for cid, record in state.results.load().items() if cid in requests}
    dd = build_rewritten_dataset(subsets, results)
    stats = rewrite_stats(dd, results, options.tokenizer)
    if stats["truncated"]:
        log.warning(
            "%d rewrites hit max_tokens=%d and are truncated: %s",
            len(stats["truncated"]),
            spec.max_tokens,
            ", ".join(stats["truncated"][:20]),
        )
    save_atomically(dd, folder, config, {"stats.json": stats})
    log.info("saved %s (model as reported by the API: %s)", folder, ", ".join(stats["api_models"]))
    return folder


def rewrite_stats(dd: datasets.DatasetDict, results: dict[str, dict], tokenizer: str) -> dict:
    """stats.json: row counts, the model names the API reported, the ids cut by max_tokens and,
    unless `tokenizer` is "none", `overlap_stats` (also logged)."""
    encode = tokenizer_encoder(tokenizer)
    overlap = overlap_stats(dd, encode) if encode else None
    for split, s in (overlap or {}).items():
        other = s["original_vs_other_original"]
        log.info(
            "token overlap %s: rewritten vs original %.4f | original vs itself %.4f | original vs other %s",
            split,
            s["rewritten_vs_original"],
            s["original_vs_itself"],
            "n/a" if other is None else f"{other:.4f}",
        )
    return {
        "num_rows": {split: len(ds) for split, ds in dd.items()},
        "api_models": sorted({str(r.get("model")) for r in results.values()}),
        "truncated": sorted(cid for cid, r in results.items() if r.get("finish_reason") == "length"),
        "tokenizer": tokenizer,
        "token_overlap": overlap,
    }


def rewrite_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prepare_data.py rewrite",
        allow_abbrev=False,
        description="Rewrite the chosen/rejected responses of a prepared preference dataset with an "
        "OpenAI-compatible chat model (OPENAI_API_KEY, OPENAI_BASE_URL). Prints the dataset folder.",
        epilog=f"Exit status: 0 dataset ready (folder printed), {EXIT_FAILED} some requests failed (listed; "
        f"rerun to retry them), {EXIT_USAGE} bad arguments or data, {EXIT_PENDING} batch submitted or "
        "not finished yet (rerun with --collect).",
    )
    p.add_argument("--dataset", required=True, help="Prepared preference DatasetDict with train and test splits.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--kind", choices=list(TEMPLATES), help="Built-in prompt.")
    what.add_argument("--prompt_template", help='Custom prompt containing "{response}" (kind "custom").')
    p.add_argument("--model", default="gpt-4.1", help="Chat model (default: %(default)s).")
    p.add_argument(
        "--mode",
        choices=("direct", "batch"),
        default="direct",
        help="direct: chat completions now; batch: the Batch API (default: %(default)s).",
    )
    p.add_argument("--collect", action="store_true", help="Batch mode: collect the submitted batch.")
    p.add_argument("--wait", action="store_true", help="Batch mode: poll until the batch has finished.")
    p.add_argument("--poll_interval", type=float, default=60.0, help="Seconds between polls (default: %(default)s).")
    p.add_argument("--num_train_samples", type=int, default=200, help="Train rows; <= 0: all (default: %(default)s).")
    p.add_argument("--num_test_samples", type=int, default=200, help="Test rows; <= 0: all (default: %(default)s).")
    p.add_argument(
        "--seed",
        "--random_seed",
        dest="seed",
        type=int,
        default=517,
        help="Seeds the row selection (default: %(default)s).",
    )
    p.add_argument("--max_tokens", type=int, default=512, help="Completion token limit (default: %(default)s).")
    p.add_argument("--output_dir", default="data_files/rewritten", help="Where the dataset folder goes.")
    p.add_argument("--state_dir", help="Resume state (default: OUTPUT_DIR/.state/<dataset folder name>).")
    p.add_argument(
        "--tokenizer",
        default="smollm2-135m-instruct",
        help='Tokenizer for the overlap statistics, or "none" (default: %(default)s).',
    )
    p.add_argument("--base_url", help="API base URL (default: $OPENAI_BASE_URL, else OpenAI's).")
    p.add_argument("--concurrency", type=int, default=8, help="Direct mode: requests in flight (default: %(default)s).")
    p.add_argument("--max_retries", type=int, default=6, help="Retries per API call (default: %(default)s).")
    p.add_argument(
        "--retry_base_delay",
        type=float,
        default=1.0,
        help="First backoff in seconds, doubled per retry (default: %(default)s).",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="Seconds per API call (default: %(default)s).")
    return p


def rewrite_main(argv: list[str]) -> None:
    """The `prepare_data.py rewrite` command."""
    parser = rewrite_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("httpx", "httpx2", "openai"):  # one INFO line per HTTP request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet_library_output()
    for name in ("concurrency", "max_retries", "max_tokens"):
        if getattr(args, name) < (0 if name == "max_retries" else 1):
            parser.error(f"--{name} is too small: {getattr(args, name)}")
    try:
        kind, template = resolve_template(args.kind, args.prompt_template)
        spec = RewriteSpec(
            dataset=os.path.abspath(args.dataset),
            template=template,
            kind=kind,
            model=args.model,
            num_train_samples=args.num_train_samples,
            num_test_samples=args.num_test_samples,
            seed=args.seed,
            max_tokens=args.max_tokens,
        )
        options = RunOptions(
            mode=args.mode,
            output_dir=args.output_dir,
            state_dir=args.state_dir,
            collect=args.collect,
            wait=args.wait,
            poll_interval=args.poll_interval,
            tokenizer=args.tokenizer,
            client=ClientOptions(
                base_url=args.base_url,
                timeout=args.timeout,
                max_retries=args.max_retries,
                retry_base_delay=args.retry_base_delay,
                concurrency=args.concurrency,
            ),
        )
        print(rewrite_dataset(spec, options))
    except DatasetError as e:
        parser.exit(EXIT_USAGE, f"prepare_data.py rewrite: error: {e}\n")
    except BatchPending as e:
        parser.exit(EXIT_PENDING, f"prepare_data.py rewrite: {e}\n")
    except RewriteError as e:
        parser.exit(EXIT_FAILED, f"prepare_data.py rewrite: error: {e}\n")


if __name__ == "__main__":
    rewrite_main(sys.argv[1:])
