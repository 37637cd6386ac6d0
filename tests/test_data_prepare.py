import importlib.util
import json
from pathlib import Path

import datasets
import pytest
import torch

from rm_exps.data import DatasetError, hamiltonian
from rm_exps.data.preference import load_preference_dataset
from rm_exps.data.prepare import (
    RECIPES,
    filter_by_length,
    prepare_dataset,
    recipe_folder_name,
    run_config,
    validate_recipe,
)

REPO = Path(__file__).parents[1]
SMALL_HAM = {
    "name": "hamiltonian_cycle",
    "num_vertices": 6,
    "num_train_graphs": 30,
    "num_test_graphs": 12,
    "num_train_samples": 20,
    "num_test_samples": 5,
    "seed": 7,
}


def test_recipes_cover_every_dataset_and_forbid_extras():
    assert set(RECIPES) == {
        "hamiltonian_cycle",
        "persona",
        "ultrafeedback",
        "rewardbench_math",
        "rewardbench_code",
        "rewardmath",
        "reward_bench",
        "rewritten",
        "arithmetic",
    }
    for model in RECIPES.values():
        assert model.model_config["extra"] == "forbid"
        assert all(field.description for field in model.model_fields.values())


def test_validate_recipe_messages():
    assert validate_recipe(SMALL_HAM) is None
    assert "did you mean 'num_vertices'" in validate_recipe({"name": "hamiltonian_cycle", "num_vertice": 5})
    assert "did you mean 'ultrafeedback'" in validate_recipe({"name": "ultrafedback"})
    assert "edge_p" in validate_recipe({"name": "hamiltonian_cycle", "edge_p": "high"})
    assert "given twice" in validate_recipe({"name": "hamiltonian_cycle", "seed": 1, "random_seed": 2})
    assert "source" in validate_recipe({"name": "hamiltonian_cycle", "source": "x"})  # generated, no source
    assert validate_recipe({"name": "persona", "output_tokens_matching_yes": ["certainly"]}) is None


def test_folder_name_is_readable_and_deterministic():
    name = recipe_folder_name({"name": "hamiltonian_cycle", "num_train_samples": 1000})
    assert name.startswith("hamiltonian_cycle_v10_p0.2_seed_982_ntrain_1000_ntest_200_")
    assert len(name.rsplit("_", 1)[1]) == 8
    # defaults spelled out, or reference spellings, resolve to the same options and folder
    assert name == recipe_folder_name(
        {"name": "hamiltonian_cycle", "num_train_samples": 1000, "random_seed": 982, "ham_cycle_edge_p": 0.2}
    )
    assert name != recipe_folder_name({"name": "hamiltonian_cycle", "num_train_samples": 1000, "max_prompt_length": 9})
    assert recipe_folder_name({"name": "ultrafeedback", "filter_out_translate_prompts": True}).startswith(
        "ultrafeedback_seed_982_ntrain_2000_ntest_200_no_translate_prompts_"
    )


def test_prepare_hamiltonian_follows_the_reference_pipeline(tmp_path):
    folder = prepare_dataset(SMALL_HAM, data_dir=str(tmp_path))
    assert folder.parent == tmp_path and folder.name == recipe_folder_name(SMALL_HAM)
    assert json.loads((folder / "run_config.json").read_text()) == run_config(SMALL_HAM)
    assert (folder / "dataset_dict.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temp folder left behind

    # one generator: all graphs, then the train randperm, then the test randperm
    g = torch.Generator().manual_seed(7)
    train, test = hamiltonian.build_hamiltonian_cycle(6, 0.2, 30, 12, generator=g)
    train = train.select(torch.randperm(30, generator=g)[:20].tolist())
    test = test.select(torch.randperm(12, generator=g)[:5].tolist())
    prepared = load_preference_dataset(str(folder))
    assert prepared["train"].to_list() == train.to_list()
    assert prepared["test"].to_list() == test.to_list()


def test_prepare_reuses_a_prepared_folder(tmp_path, monkeypatch):
    folder = prepare_dataset(SMALL_HAM, data_dir=str(tmp_path))

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a prepared dataset")

    monkeypatch.setattr(hamiltonian, "build_hamiltonian_cycle", fail)
    assert prepare_dataset(dict(SMALL_HAM), data_dir=str(tmp_path)) == folder
    with pytest.raises(AssertionError, match="regenerated"):  # other options: a new build
        prepare_dataset({**SMALL_HAM, "seed": 8}, data_dir=str(tmp_path))


def test_split_size_of_a_recipe_before_and_after_preparing(tmp_path):
    from rm_exps.data.prepare import split_size

    spec = {"name": "arithmetic", "num_train_samples": 12, "num_test_samples": 3}
    assert split_size(spec, "train", str(tmp_path)) == (12, True)  # what the recipe says: at most
    assert split_size({"name": "reward_bench"}, "train", str(tmp_path)) == (None, False)  # every row: unknown
    prepare_dataset(spec, data_dir=str(tmp_path))
    assert split_size(spec, "train", str(tmp_path)) == (12, False) and split_size(spec, "test", str(tmp_path)) == (
        3,
        False,
    )


def test_prepare_refuses_a_foreign_folder(tmp_path):
    (tmp_path / recipe_folder_name(SMALL_HAM)).mkdir()
    with pytest.raises(DatasetError, match="delete it"):
        prepare_dataset(SMALL_HAM, data_dir=str(tmp_path))
    with pytest.raises(DatasetError, match="unknown option"):
        prepare_dataset({**SMALL_HAM, "vertices": 3}, data_dir=str(tmp_path))


class WordTokenizer:
    """One token per word; a BOS token only if special tokens are asked for."""

    def __init__(self):
        self.added = []

    def encode(self, text, add_special_tokens=True):
        return [0] * (len(text.split()) + (1 if add_special_tokens else 0))

    def add_tokens(self, tokens):
        self.added += tokens


def test_length_filter_does_not_count_bos():
    ds = datasets.Dataset.from_list(
        [
            {"prompt": "a b", "chosen": "x y z", "rejected": "x"},  # fits exactly
            {"prompt": "a b c", "chosen": "x", "rejected": "x"},  # prompt too long
            {"prompt": "a", "chosen": "x", "rejected": "x y z w"},  # rejected too long
        ]
    )
    assert filter_by_length(ds, WordTokenizer(), 2, 3)["prompt"] == ["a b"]
    assert len(filter_by_length(ds, WordTokenizer(), 0, 0)) == 3  # limits <= 0 disable the checks


def test_prepare_with_filters_and_injected_tokenizer(tmp_path):
    rows = [
        {
            "prompt": prompt,
            "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "ok"}],
            "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "no"}],
            "score_chosen": 2.0,
            "score_rejected": 1.0,
        }
        for prompt in ["short one", "Translate this", "a translation task", "far too long a prompt here", "fine"]
    ]
    (tmp_path / "uf").mkdir()
    for split in ("train_prefs", "test_prefs"):
        datasets.Dataset.from_list(rows).to_json(tmp_path / "uf" / f"{split}.jsonl")
    loaded = []
    spec = {
        "name": "ultrafeedback",
        "source": str(tmp_path / "uf"),
        "tokenizer_for_length_filtering": "words",
        "max_prompt_length": 3,
        "filter_out_translate_prompts": True,
        "num_train_samples": -1,
    }
    folder = prepare_dataset(
        spec, data_dir=str(tmp_path / "out"), load_tokenizer=lambda name: loaded.append(name) or WordTokenizer()
    )
    assert loaded == ["words"]
    prepared = load_preference_dataset(str(folder))
    assert sorted(prepared["train"]["prompt"]) == sorted(prepared["test"]["prompt"]) == ["fine", "short one"]


def test_hamiltonian_length_filter_adds_graph_tokens(tmp_path):
    tokenizers = []

    def load_tokenizer(name):
        tokenizers.append(WordTokenizer())
        return tokenizers[-1]

    prepare_dataset({**SMALL_HAM, "tokenizer_for_length_filtering": "words"}, str(tmp_path), load_tokenizer)
    assert tokenizers[0].added == ["<sep>", "<edge_sep>"]


def load_cli():
    spec = importlib.util.spec_from_file_location("prepare_data_cli", REPO / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_builds_with_reference_flags(tmp_path, capsys):
    load_cli().main(
        [
            "--dataset",
            "hamiltonian_cycle",
            "--output_dir",
            str(tmp_path),
            "--random_seed",
            "7",
            "--ham_cycle_num_vertices",
            "6",
            "--num_train_graphs",
            "30",
            "--num_test_graphs",
            "12",
            "--num_train_samples",
            "20",
            "--num_test_samples",
            "5",
        ]
    )
    assert capsys.readouterr().out.strip() == str(tmp_path / recipe_folder_name(SMALL_HAM))


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--dataset", "hamiltonian_cycle", "--num_vertice", "5"], "did you mean --num_vertices"),
        (["--dataset", "hamiltonian_cycle", "--ham_cycle_edge_p", "high"], "edge_p"),
        (["--dataset", "nope"], "invalid choice"),
        ([], "--dataset"),
    ],
)
def test_cli_rejects_bad_options_with_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        load_cli().main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
