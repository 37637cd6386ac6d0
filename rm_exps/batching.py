"""Chat formatting, tokenization and pair batches, shared by every objective.

Each dataset is formatted and tokenized once per run (`encode_pairs`); batches are then built by
concatenating ids, never by re-tokenizing text. A pair batch describes 2B scored sequences, the B
chosen ones first, then the B rejected ones, in one of two layouts:

PairCollator (default): one row per sequence, prompt + response, right-padded.
    input_ids      [2B, L]  pad_token_id after the last real token
    attention_mask [2B, L]  1 on real tokens
    response_mask  [2B, L]  1 on response tokens
SharedPromptCollator (`share_prompt`): one row per pair, prompt + chosen + rejected, so the
prompt is encoded once. A 4-D mask keeps chosen and rejected from seeing each other, and the
rejected tokens continue the prompt's position ids, so every hidden state equals the one-row-per-
sequence layout's.
    input_ids      [B, L]
    attention_mask [B, 1, L, L] (bool: query i may attend key j)
    position_ids   [B, L]
    segment_lengths [B, 3]  (prompt, chosen, rejected) token counts, for attention that skips the
                  mask's wasted scores (objectives/attention.py)

Both layouts carry the same read-out indices into the flattened [rows * L] positions, so reward
modules need not know the layout:
    seq_end     [2B]  last real token of each sequence (EX-RM head, next-token verdicts)
    target_pos  [T]   every scored response token (the first token of a row is never scored)
    target_pred [T]   the position whose hidden state predicts it (its left neighbour, or for
                      the first rejected token of a shared row, the last prompt token)
    target_row  [T]   which of the 2B sequences it belongs to
    token_mask  [rows, L]  1 on real tokens (for token counts)
Right padding keeps rows flush left and no real token is ever cut (the reference's flush-left
step dropped the last token of the longest row). Length limits (`LengthLimits`: the plan's
`max_length`, `max_prompt_length`, `over_length`) act once, in `encode_pairs`: a pair over them is
dropped, or truncated in its content while the chat template's own tokens stay (`fit_example`).

How a pair becomes text is its `PairFormat`, named by the objective's `input_format`: "chat" (the
prompt as the user turn, each response as the assistant turn) is defined here; objectives that
template the pair differently define and register their own format next to them (gen_rm.py,
gram.py). Formats that put both answers of a pair in ONE row (slots A and B) make the two rows of a
pair its two presentation orders: the "chosen" row has the chosen answer in slot A, the "rejected"
row has it in slot B. `OrderCollator` builds training batches of one order per pair (a seeded coin)
or both orders, with the same row layout and read-out keys.

Importing this module imports no torch (the objective registry imports it to register formats;
see rm_exps/lazy.py): torch is imported when a batch is first built.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from rm_exps.lazy import LazyModule

torch = LazyModule("torch")

REF_LOGPS = "ref_logps"  # optional per-example (chosen, rejected) reference log-probs
GEN_PROBS = (
    "gen_probs"  # optional per-example (chosen, rejected) lists: a generator's p(token | prefix) per response token
)

# Every rendering is dated PINNED_DATE, not today: templates that print the date (Llama-3.x: `date_string`, or
# else `strftime_now`) would otherwise change token ids from one day to the next, and with them the reference
# log-prob and sample caches. `date_string` is a template variable; `strftime_now` is a global of transformers'
# template environment (render variables cannot be functions), so `render_chat` pins the clock it reads.
# (26 Jul 2024 is Llama-3.1's own default date_string.)
PINNED_DATE = datetime.datetime(2024, 7, 26)
CHAT_TEMPLATE_KWARGS = {"date_string": PINNED_DATE.strftime("%d %b %Y")}
_RENDER_LOCK = threading.Lock()


class _PinnedClock(datetime.datetime):
    @classmethod
    def now(cls, tz: Any = None) -> datetime.datetime:
        return cls(PINNED_DATE.year, PINNED_DATE.month, PINNED_DATE.day, tzinfo=tz)


def render_chat(
    tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False, **template_kwargs: Any
) -> str:
    """The chat template's text of `messages` dated PINNED_DATE (`date_string` and `strftime_now`), with
    `template_kwargs`."""
    from transformers.utils import chat_template_utils

    kwargs = {**CHAT_TEMPLATE_KWARGS, **template_kwargs}
    with _RENDER_LOCK:  # strftime_now reads chat_template_utils.datetime.now(): pinned while rendering
        today = getattr(chat_template_utils, "datetime", None)
        chat_template_utils.datetime = _PinnedClock
        try:
            return tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False, **kwargs
            )
        finally:
            chat_template_utils.datetime = today


def chat_prompt_and_response(tokenizer: Any, prompt: str, response: str, **template_kwargs: Any) -> tuple[str, str]:
    """Split the chat-formatted pair into the prompt text (with the generation prompt) and the
    response text (with the template's end-of-turn suffix), as the reference does."""
    user = [{"role": "user", "content": prompt}]
    prompt_text = render_chat(tokenizer, user, add_generation_prompt=True, **template_kwargs)
    full = render_chat(tokenizer, user + [{"role": "assistant", "content": response}], **template_kwargs)
    if not full.startswith(prompt_text):
        raise ValueError(
            "the chat template renders the assistant turn in a way that does not extend the "
            "generation prompt; rm_exps needs prompt + response = full conversation"
        )
    return prompt_text, full[len(prompt_text) :]


def truncate_tokens(tokenizer: Any, text: str, max_tokens: int) -> str:
    """The first `max_tokens` tokens of `text` (all of it when max_tokens <= 0). Used to cut each
    answer before templating, so the template's own text (e.g. answer tags) always survives."""
    if max_tokens <= 0:
        return text
    ids = token_ids(tokenizer, text)
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


def token_ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class PairFormat:
    """How a preference example {prompt, chosen, rejected} becomes token ids: prompt_ids, chosen_ids,
    rejected_ids (the chosen and rejected rows are prompt_ids + their own ids). An objective's
    `input_format` names one; `register_format` makes a subclass known by its `name`.

    `separate_prompt`: the rows are the chat template's user turn (the prompt, which
    `max_prompt_length` bounds) followed by the assistant turn (the response); over-long pairs are
    truncated part by part (`truncate_parts`). Otherwise the format templates the question and the
    answers into one text, and over-long pairs have their answers cut before templating (`fit_answers`)."""

    name: ClassVar[str]
    separate_prompt: ClassVar[bool] = False

    def encode(self, tokenizer: Any, example: dict[str, str], max_answer_tokens: int = 0) -> dict[str, list[int]]:
        """The ids of one example; answers cut to `max_answer_tokens` first where the format does so (<= 0: uncut)."""
        raise NotImplementedError


PAIR_FORMATS: dict[str, PairFormat] = {}


def register_format(cls: type[PairFormat]) -> type[PairFormat]:
    PAIR_FORMATS[cls.name] = cls()
    return cls


def pair_format(name: str) -> PairFormat:
    if name not in PAIR_FORMATS:
        raise KeyError(
            f"unknown input format {name!r} (known: {', '.join(sorted(PAIR_FORMATS))}; an objective's own format "
            "is registered when its module is imported, e.g. by importing rm_exps.objectives)"
        )
    return PAIR_FORMATS[name]


@register_format
class ChatFormat(PairFormat):
    """The prompt as the user turn (with the generation prompt), each response as the assistant turn
    (with the template's end-of-turn suffix): `chat_prompt_and_response`."""

    name = "chat"
    separate_prompt = True

    def encode(self, tokenizer: Any, example: dict[str, str], max_answer_tokens: int = 0) -> dict[str, list[int]]:
        prompt_text, chosen = chat_prompt_and_response(tokenizer, example["prompt"], example["chosen"])
        _, rejected = chat_prompt_and_response(tokenizer, example["prompt"], example["rejected"])
        return {
            "prompt_ids": token_ids(tokenizer, prompt_text),
            "chosen_ids": token_ids(tokenizer, chosen),
            "rejected_ids": token_ids(tokenizer, rejected),
        }


def encode_example(
    tokenizer: Any, example: dict[str, str], fmt: str, max_answer_tokens: int = 0
) -> dict[str, list[int]]:
    """Token ids of one preference example in the registered format `fmt` (see PairFormat)."""
    return pair_format(fmt).encode(tokenizer, example, max_answer_tokens)


class EncodedPairs:
    """A tokenized preference split: a list of {prompt_ids, chosen_ids, rejected_ids}; `rows[i]` is
    the source row of example i (length limits may drop rows), `length_counts` what the limits did
    (None: no limits). A map-style dataset (`len` and `[i]`, all a DataLoader reads), so that this
    module's top level needs no torch."""

    def __init__(
        self,
        examples: list[dict[str, list[int]]],
        rows: Sequence[int] | None = None,
        length_counts: LengthCounts | None = None,
    ):
        self.examples = examples
        self.rows = list(range(len(examples))) if rows is None else list(rows)
        self.length_counts = length_counts

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.examples[i]

    def num_tokens(self) -> int:
        return sum(2 * len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in self.examples)

    def lengths(self, shared_prompt: bool = False) -> list[int]:
        """Padded row length each pair needs (see `pair_length`)."""
        return [pair_length(e, shared_prompt) for e in self.examples]

    def length_order(self, shared_prompt: bool = False) -> list[int]:
        """Indices longest first: evaluation batches then pad little, and the largest batch comes
        first, so an out-of-memory error shows at once."""
        return sorted(range(len(self.examples)), key=lambda i: -pair_length(self.examples[i], shared_prompt))

    def select(self, indices: Sequence[int]) -> EncodedPairs:
        """The examples at `indices` (shared, not copied: precomputed values reach both)."""
        return EncodedPairs([self.examples[i] for i in indices], [self.rows[i] for i in indices])


def pair_length(example: dict[str, Any], shared_prompt: bool = False) -> int:
    """Row length of a pair: prompt + the longer response (one row per sequence), or prompt +
    both responses (`SharedPromptCollator`'s one row per pair)."""
    chosen, rejected = len(example["chosen_ids"]), len(example["rejected_ids"])
    return len(example["prompt_ids"]) + (chosen + rejected if shared_prompt else max(chosen, rejected))


class LengthGroupedSampler:
    """Random order in which neighbouring examples have similar lengths, so batches pad little.

    Each epoch: a random permutation (from `generator`, which carries over between epochs), cut
    into mega-batches of `mega_batches` batches, each sorted by length, longest first. Every
    example appears exactly once per epoch; which examples share a batch stays random, within a
    mega-batch. (The idea of transformers' LengthGroupedSampler, without its longest-first
    special case.) An iterable of indices, which is what a DataLoader's `sampler` takes.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, generator: torch.Generator, mega_batches: int = 50):
        self.lengths = list(lengths)
        self.group = batch_size * mega_batches
        self.generator = generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        for start in range(0, len(order), self.group):
            yield from sorted(order[start : start + self.group], key=lambda i: -self.lengths[i])


def encode_pairs(
    dataset: Iterable[dict[str, str]],
    tokenizer: Any,
    fmt: str,
    max_answer_tokens: int = 0,
    limits: LengthLimits | None = None,
) -> EncodedPairs:
    """Every pair tokenized once. With active `limits`, pairs over them are dropped or truncated
    (`fit_example`); the result counts both (`length_counts`) and says which row each kept pair
    comes from (`rows`), so per-row labels (RewardBench subsets) stay aligned."""
    if limits is None or not limits.active:
        return EncodedPairs([encode_example(tokenizer, ex, fmt, max_answer_tokens) for ex in dataset])
    frame = template_frame(tokenizer) if pair_format(fmt).separate_prompt else None
    kept, rows, counts = [], [], LengthCounts(template=frame)
    for i, ex in enumerate(dataset):
        encoded = encode_example(tokenizer, ex, fmt, max_answer_tokens)
        counts.see(encoded, limits.shared_prompt)
        fitted = fit_example(tokenizer, ex, encoded, fmt, limits, frame, max_answer_tokens)
        if fitted is None:
            counts.dropped += 1
            continue
        counts.truncated += fitted is not encoded
        kept.append(fitted)
        rows.append(i)
    return EncodedPairs(kept, rows, counts)


# --- length limits ---------------------------------------------------------------------------

OverLength = Literal["drop", "truncate"]
SENTINEL = "Sentinel"  # content whose position in a rendering tells the template's own tokens from the content


@dataclass(frozen=True)
class LengthLimits:
    """A run's length limits (None: none). `max_length` bounds the row of the batch layout
    (`pair_length`: prompt + the longer response, with `shared_prompt` prompt + both responses; in the
    formats with both answers in one row, that whole row), `max_prompt_length` the prompt part; a pair over
    either is dropped (`over_length="drop"`, TRL's RewardTrainer) or truncated (`fit_example`)."""

    max_length: int | None = None
    max_prompt_length: int | None = None
    over_length: OverLength = "drop"
    shared_prompt: bool = False

    @property
    def active(self) -> bool:
        return self.max_length is not None or self.max_prompt_length is not None

    def fits(self, example: dict[str, list[int]]) -> bool:
        return (self.max_prompt_length is None or len(example["prompt_ids"]) <= self.max_prompt_length) and (
            self.max_length is None or pair_length(example, self.shared_prompt) <= self.max_length
        )

    def describe(self) -> str:
        """The limits as the plan writes them, with what max_length counts in this layout."""
        parts = []
        if self.max_length is not None:
            row = "prompt + chosen + rejected" if self.shared_prompt else "prompt + the longer response"
            parts.append(f"max_length {self.max_length} ({row})")
        if self.max_prompt_length is not None:
            parts.append(f"max_prompt_length {self.max_prompt_length}")
        return ", ".join(parts) + f", over_length '{self.over_length}'"


@dataclass
class LengthCounts:
    """What the limits did to one split: pairs seen, dropped, truncated; the shortest pair and prompt
    before the limits and the template's own tokens, which truncation keeps (what a limit that drops
    everything is compared with)."""

    pairs: int = 0
    dropped: int = 0
    truncated: int = 0
    shortest_pair: int | None = None
    shortest_prompt: int | None = None
    template: Frame | None = None

    def see(self, example: dict[str, list[int]], shared_prompt: bool) -> None:
        length, prompt = pair_length(example, shared_prompt), len(example["prompt_ids"])
        self.pairs += 1
        self.shortest_pair = length if self.shortest_pair is None else min(self.shortest_pair, length)
        self.shortest_prompt = prompt if self.shortest_prompt is None else min(self.shortest_prompt, prompt)

    def summary(self) -> dict[str, int]:
        """The summary's `length_limits` entry of the split."""
        return {"pairs": self.pairs, "dropped": self.dropped, "truncated": self.truncated}


def no_pairs_left_message(split: str, limits: LengthLimits, counts: LengthCounts) -> str:
    """Why a split has no pair left under the limits, with the numbers to pick better ones."""
    how = ""
    if limits.over_length == "truncate":
        frame = counts.template
        kept = (
            "a question templated into the row"
            if frame is None
            else f"{frame.prompt_head + frame.prompt_tail} template tokens of the prompt, "
            f"{frame.response_head + frame.response_tail} of each response"
        )
        how = f"even truncated ({kept} and one content token of each part stay), "
    fix = "raise the limits" + (" or set over_length 'truncate'" if limits.over_length == "drop" else "")
    return (
        f"the length limits drop every pair of split '{split}' ({counts.pairs} pairs; {limits.describe()}): "
        f"{how}its shortest pair is {counts.shortest_pair} tokens and its shortest prompt "
        f"{counts.shortest_prompt}; {fix}"
    )


@dataclass(frozen=True)
class Frame:
    """Token counts of the template's own text around the content: the prompt's head (BOS, the user
    header) and tail (end of turn, generation prompt), the response's head (e.g. an empty think
    block) and tail (the end-of-turn suffix, the last token EX-RM reads). Truncation cuts content only."""

    prompt_head: int
    prompt_tail: int
    response_head: int
    response_tail: int


def template_frame(tokenizer: Any) -> Frame:
    """The Frame of the "chat" format under this tokenizer's chat template, read off a rendering
    with SENTINEL content (a boundary token merged with the content counts as the template's: kept)."""
    prompt, response = chat_prompt_and_response(tokenizer, SENTINEL, SENTINEL)
    start, end = prompt.index(SENTINEL), response.rindex(SENTINEL) + len(SENTINEL)
    return Frame(
        len(token_ids(tokenizer, prompt[:start])),
        _tokens_after(tokenizer, prompt, start + len(SENTINEL)),
        len(token_ids(tokenizer, response[: response.index(SENTINEL)])),
        _tokens_after(tokenizer, response, end),
    )


def _tokens_after(tokenizer: Any, text: str, position: int) -> int:
    """Tokens of `text` after character `position`, counted in context (the text tokenized whole)."""
    return len(token_ids(tokenizer, text)) - len(token_ids(tokenizer, text[:position]))


def fit_example(
    tokenizer: Any,
    example: dict[str, str],
    encoded: dict[str, list[int]],
    fmt: str,
    limits: LengthLimits,
    frame: Frame | None,
    max_answer_tokens: int = 0,
) -> dict[str, list[int]] | None:
    """`encoded` itself when it fits the limits; else None (dropped) or, with over_length "truncate",
    a truncated copy: `truncate_parts` ("chat") or `fit_answers` (the formats that template the
    question and the answers into one text); None when even that does not fit."""
    if limits.fits(encoded):
        return encoded
    if limits.over_length == "drop":
        return None
    if pair_format(fmt).separate_prompt:
        return truncate_parts(encoded, limits, frame)
    return fit_answers(tokenizer, example, fmt, limits, max_answer_tokens)


def truncate_parts(encoded: dict[str, list[int]], limits: LengthLimits, frame: Frame) -> dict[str, list[int]] | None:
    """The pair cut to `fitted_lengths`: the prompt keeps its content's end, each response its
    content's start, and both keep the template's head and tail tokens (`cut`)."""
    parts = [encoded[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")]
    response = (frame.response_head, frame.response_tail)
    frames = [(frame.prompt_head, frame.prompt_tail), response, response]
    minimums = tuple(min(len(ids), head + tail + 1) for ids, (head, tail) in zip(parts, frames))
    lengths = fitted_lengths(tuple(map(len, parts)), minimums, limits)
    if lengths is None:
        return None
    prompt, chosen, rejected = (
        cut(ids, n, head, tail, keep_end=k == 0) for k, (ids, n, (head, tail)) in enumerate(zip(parts, lengths, frames))
    )
    return {**encoded, "prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}


def fitted_lengths(
    lengths: tuple[int, int, int], minimums: tuple[int, int, int], limits: LengthLimits
) -> tuple[int, int, int] | None:
    """(prompt, chosen, rejected) token counts within the limits, as TRL's DPOTrainer orders it: the
    prompt first, to max_prompt_length; then the responses, to what max_length leaves them; then the
    prompt further, when the responses at their minimums still do not fit. None: the minimums do not fit."""
    (p, c, r), (p_min, c_min, r_min) = lengths, minimums
    if limits.max_prompt_length is not None:
        p = min(p, limits.max_prompt_length)
    if limits.max_length is None:
        return (p, c, r) if p >= p_min else None
    needed = c_min + r_min if limits.shared_prompt else max(c_min, r_min)
    p = min(p, limits.max_length - needed)
    if p < p_min:
        return None
    budget = limits.max_length - p
    if not limits.shared_prompt:
        return p, min(c, budget), min(r, budget)
    if c + r <= budget:
        return p, c, r
    half = budget // 2  # the shorter response keeps what it can of its half; the longer takes the rest
    if c <= half:
        return p, c, budget - c
    if r <= half:
        return p, budget - r, r
    return p, budget - half, half


def cut(ids: list[int], keep: int, head: int, tail: int, keep_end: bool) -> list[int]:
    """`ids` cut to `keep` tokens (keep > head + tail) in its content only: the `head` first and
    `tail` last tokens (the template's) stay; the content keeps its end (`keep_end`) or its start."""
    if len(ids) <= keep:
        return ids
    n, content = keep - head - tail, ids[head : len(ids) - tail]
    return ids[:head] + (content[len(content) - n :] if keep_end else content[:n]) + ids[len(ids) - tail :]


def fit_answers(
    tokenizer: Any, example: dict[str, str], fmt: str, limits: LengthLimits, max_answer_tokens: int = 0
) -> dict[str, list[int]] | None:
    """The formats whose rows template the question and the answers into one text (no `separate_prompt`):
    both answers cut at their end, before templating, to the largest common token count whose rows
    fit (as judge_max_answer_tokens, which stays the upper bound), so the question, the template's
    text (tags, a verdict question) and the generation prompt stay whole; None when one token per
    answer does not fit. A binary search, re-encoding each try (only over-long pairs get here)."""
    longest = max(len(token_ids(tokenizer, example[k])) for k in ("chosen", "rejected"))
    low, high = 1, min(longest, max_answer_tokens) if max_answer_tokens > 0 else longest
    best = None
    while low <= high:
        middle = (low + high) // 2
        answers = {k: truncate_tokens(tokenizer, example[k], middle) for k in ("chosen", "rejected")}
        encoded = encode_example(tokenizer, {**example, **answers}, fmt, max_answer_tokens)
        if limits.fits(encoded):
            best, low = encoded, middle + 1
        else:
            high = middle - 1
    return best


def pad_rows(rows: Sequence[Sequence[int]], pad_value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def _readout(seq_end: list[int], targets: list[tuple[int, int, int]]) -> dict[str, torch.Tensor]:
    pos, pred, row = zip(*targets) if targets else ((), (), ())
    return {
        "seq_end": torch.tensor(seq_end, dtype=torch.long),
        "target_pos": torch.tensor(pos, dtype=torch.long),
        "target_pred": torch.tensor(pred, dtype=torch.long),
        "target_row": torch.tensor(row, dtype=torch.long),
    }


def _with_ref_logps(batch: dict[str, torch.Tensor], examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    if REF_LOGPS in examples[0]:  # precomputed reference log-probs travel with their examples
        batch[REF_LOGPS] = torch.tensor([ex[REF_LOGPS][side] for side in (0, 1) for ex in examples])
    return batch


def row_batch(rows: list[list[int]], prompt_lengths: list[int], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One row per sequence (prompt + response), right-padded, with the read-out indices."""
    input_ids = pad_rows(rows, pad_token_id)
    width = input_ids.shape[1]
    attention_mask = pad_rows([[1] * len(r) for r in rows], 0)
    response = [[0] * p + [1] * (len(r) - p) for r, p in zip(rows, prompt_lengths)]
    targets = [
        (i * width + t, i * width + t - 1, i)
        for i, (r, p) in enumerate(zip(rows, prompt_lengths))
        for t in range(max(p, 1), len(r))
    ]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "response_mask": pad_rows(response, 0),
        "token_mask": attention_mask,
        **_readout([i * width + len(r) - 1 for i, r in enumerate(rows)], targets),
    }


@dataclass
class PairCollator:
    """Builds a pair batch [chosen rows; rejected rows] from encoded examples."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        sides = [(ex, side) for side in ("chosen_ids", "rejected_ids") for ex in examples]
        batch = row_batch(
            [ex["prompt_ids"] + ex[side] for ex, side in sides],
            [len(ex["prompt_ids"]) for ex, _ in sides],
            self.pad_token_id,
        )
        if GEN_PROBS in examples[0]:  # aligned with input_ids: 0 on prompt and padding positions
            probs = torch.zeros(batch["input_ids"].shape, dtype=torch.float)
            for side in (0, 1):
                for i, ex in enumerate(examples):
                    start = len(ex["prompt_ids"])
                    values = ex[GEN_PROBS][side]
                    probs[side * len(examples) + i, start : start + len(values)] = torch.tensor(
                        values, dtype=torch.float
                    )
            batch[GEN_PROBS] = probs
        return _with_ref_logps(batch, examples)


@dataclass
class SharedPromptCollator:
    """Builds a shared-prompt pair batch: one row prompt + chosen + rejected per pair (see module doc)."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        n = len(examples)
        lengths = [(len(e["prompt_ids"]), len(e["chosen_ids"]), len(e["rejected_ids"])) for e in examples]
        width = max(p + c + r for p, c, r in lengths)
        input_ids = pad_rows(
            [e["prompt_ids"] + e["chosen_ids"] + e["rejected_ids"] for e in examples], self.pad_token_id
        )
        input_ids = torch.nn.functional.pad(input_ids, (0, width - input_ids.shape[1]), value=self.pad_token_id)
        positions = torch.zeros(n, width, dtype=torch.long)
        segments = torch.full((n, width), 3, dtype=torch.long)  # 0 prompt, 1 chosen, 2 rejected, 3 padding
        seq_end, chosen_targets, rejected_targets = [0] * (2 * n), [], []
        for b, (p, c, r) in enumerate(lengths):
            positions[b, : p + c + r] = torch.cat([torch.arange(p + c), torch.arange(p, p + r)])
            segments[b, :p], segments[b, p : p + c], segments[b, p + c : p + c + r] = 0, 1, 2
            base = b * width
            seq_end[b], seq_end[n + b] = base + p + c - 1, base + p + c + r - 1
            chosen_targets += [(base + t, base + t - 1, b) for t in range(max(p, 1), p + c)]
            rejected_targets += [
                (base + p + c + k, base + (p - 1 if k == 0 else p + c + k - 1), n + b)
                for k in range(r)
                if k > 0 or p > 0
            ]
        idx = torch.arange(width)
        causal = idx[None, :, None] >= idx[None, None, :]
        query, key = segments[:, :, None], segments[:, None, :]
        allowed = causal & (query < 3) & (key < 3) & ((key == 0) | (key == query))
        allowed |= torch.eye(width, dtype=torch.bool)[None] & (
            query == 3
        )  # padding attends to itself: no empty softmax
        batch = {
            "input_ids": input_ids,
            "attention_mask": allowed[:, None],
            "position_ids": positions,
            "segment_lengths": torch.tensor(lengths, dtype=torch.long),
            "token_mask": (segments < 3).long(),
            **_readout(seq_end, chosen_targets + rejected_targets),
        }
        return _with_ref_logps(batch, examples)


MODEL_INPUT_KEYS = (
    "input_ids",
    "attention_mask",
    "position_ids",
    "segment_lengths",
    "response_mask",
    "seq_end",
    "target_pos",
    "target_pred",
    "target_row",
)


@dataclass
class OrderCollator:
    """Training batches of the formats with both answers in one row (the GRAM objectives'): each pair
    in one presentation order chosen by a seeded coin (`order="random"`), or in both (`"both"`).
    Besides the row tensors it gives `order` [R] (0: chosen answer in slot A, 1: in slot B) and
    `num_pairs` (rows are not 2 per pair here)."""

    pad_token_id: int
    order: Literal["random", "both"]
    seed: int

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def skip(self, batch_sizes: Iterable[int]) -> None:
        """Draw the coins of batches that a resumed epoch skips, so the next batch gets the coins
        it got in the uninterrupted run."""
        if self.order == "random":
            for n in batch_sizes:
                torch.randint(0, 2, (n,), generator=self.generator)

    def __call__(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        if self.order == "both":
            orders = [0] * len(examples) + [1] * len(examples)
            examples = examples + examples
        else:
            orders = torch.randint(0, 2, (len(examples),), generator=self.generator).tolist()
        rows = [ex["prompt_ids"] + ex["rejected_ids" if o else "chosen_ids"] for ex, o in zip(examples, orders)]
        batch = row_batch(rows, [len(ex["prompt_ids"]) for ex in examples], self.pad_token_id)
        return {
            **batch,
            "order": torch.tensor(orders),
            "num_pairs": torch.tensor(len(orders) // (2 if self.order == "both" else 1)),
        }


def attach_in_chunks(
    datasets: Iterable[EncodedPairs], key: str, batch_size: int, compute: Callable[[list[dict[str, Any]]], list[Any]]
) -> None:
    """example[key] = compute(chunk)[i] for every example that has no `key` yet, `batch_size` at a
    time: how frozen per-example values (reference log-probs, generator probabilities) are made once.
    Chunks go longest first, so they pad little whatever the dataset's order (a training set is not sorted)."""
    for dataset in datasets:
        missing = sorted((ex for ex in dataset.examples if key not in ex), key=pair_length, reverse=True)
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            for example, value in zip(chunk, compute(chunk), strict=True):
                example[key] = value


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors a reward module's forward takes (a batch may carry more, e.g. reference log-probs)."""
    return {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}


def num_pairs(batch: dict[str, torch.Tensor]) -> int:
    """Pairs in a batch: `num_pairs` when the collator says so, else two sequences per pair."""
    return int(batch["num_pairs"]) if "num_pairs" in batch else batch["seq_end"].shape[0] // 2


def split_pair(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row values of a pair batch -> (chosen, rejected)."""
    half = values.shape[0] // 2
    return values[:half], values[half:]
