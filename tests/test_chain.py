"""Runs that read other runs' outputs ('run:<experiment_name>'): ordering, resolution, validation,
and the sweep not starting a run whose producer failed."""

import json

import pytest

from rm_exps import sweep
from rm_exps.plan import PlanError, build_runs


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    for split, prompts in (("train", ("q", "r")), ("test", ("q",))):
        (folder / f"{split}.jsonl").write_text(
            "".join(json.dumps({"prompt": p, "chosen": "a", "rejected": "b"}) + "\n" for p in prompts)
        )
    return str(folder)


def plan(data, tmp_path, *runs):
    common = {"model": "tiny-random-llama", "dataset_path": data, "outputs_dir": str(tmp_path / "out")}
    return {"configurations": [{"base_config": {**common, **r}} for r in runs]}


def test_producers_run_first_and_references_resolve(data, tmp_path):
    runs = build_runs(
        plan(
            data,
            tmp_path,
            {"experiment_name": "dpo", "objective": "dpo", "model": "run:sft", "dataset_path": "run:rm"},
            {
                "experiment_name": "rm",
                "objective": "icrm",
                "generator": "run:sft",
                "bon_policy": "run:sft",
                "dpo_pairs_num_prompts": 4,
                "num_train_samples": 1,
                "save_model": True,
            },
            {"experiment_name": "sft", "objective": "sft", "save_model": True},
            {"experiment_name": "alone", "objective": "ex_rm"},
        )
    )
    assert [r.name for r in runs] == ["sft", "rm", "dpo", "alone"]
    assert [r.index for r in runs] == [1, 2, 3, 4]
    sft, rm, dpo, _ = runs
    out = tmp_path / "out"
    assert rm.config.icrm.generator == str(out / "sft" / "model")
    assert rm.config.best_of_n.policy == str(out / "sft" / "model")
    assert dpo.config.model == str(out / "sft" / "model")
    assert dpo.config.dataset_path == str(out / "rm" / "dpo_pairs")
    assert set(dpo.dependencies) == {out / "sft", out / "rm"} and rm.dependencies == [out / "sft", out / "sft"]


def test_repetitions_read_the_same_repetition(data, tmp_path):
    p = plan(
        data,
        tmp_path,
        {"experiment_name": "sft", "objective": "sft", "save_model": True},
        {"experiment_name": "rm", "objective": "icrm", "generator": "run:sft"},
    )
    p["repetitions"] = 2
    runs = build_runs(p)
    rm2 = next(r for r in runs if r.name == "rm__rep2")
    assert rm2.config.icrm.generator == str(tmp_path / "out" / "sft__rep2" / "model")


def test_missing_producer_and_unsaved_model_are_errors(data, tmp_path):
    with pytest.raises(PlanError) as info:
        build_runs(
            plan(
                data,
                tmp_path,
                {"experiment_name": "sft_gen", "objective": "sft"},
                {"experiment_name": "rm", "objective": "icrm", "generator": "run:sft_gem"},
                {"experiment_name": "rm2", "objective": "icrm", "generator": "run:sft_gen"},
                {"experiment_name": "dpo", "objective": "dpo", "dataset_path": "run:rm2"},
            )
        )
    text = "\n".join(info.value.errors)
    assert (
        "field 'generator' reads run 'sft_gem', but the plan has no run of that name (did you mean 'sft_gen'?)" in text
    )
    assert "field 'generator' reads run 'sft_gen': it must set save_model: true" in text
    assert "field 'dataset_path' reads run 'rm2': it must run best-of-N (set bon_policy)" in text
    with pytest.raises(PlanError) as info:  # a producer with problems of its own is not called missing
        build_runs(
            plan(
                data,
                tmp_path,
                {"experiment_name": "sft", "objective": "stf", "save_model": True},
                {"experiment_name": "dpo", "objective": "dpo", "model": "run:sft"},
            )
        )
    assert "field 'model' reads run 'sft', which is invalid (its problems are listed above)" in str(info.value)


def test_cycles_are_errors(data, tmp_path):
    with pytest.raises(PlanError, match=r"cycle: a -> b -> a"):
        build_runs(
            plan(
                data,
                tmp_path,
                {"experiment_name": "a", "objective": "icrm", "generator": "run:b", "save_model": True},
                {"experiment_name": "b", "objective": "icrm", "generator": "run:a", "save_model": True},
            )
        )
    with pytest.raises(PlanError, match=r"cycle: self -> self"):
        build_runs(
            plan(
                data, tmp_path, {"experiment_name": "self", "objective": "sft", "model": "run:self", "save_model": True}
            )
        )


def test_icrm_needs_a_generator_unless_grm(data, tmp_path):
    with pytest.raises(PlanError, match="needs `generator`"):
        build_runs(plan(data, tmp_path, {"experiment_name": "rm", "objective": "icrm"}))
    assert build_runs(plan(data, tmp_path, {"experiment_name": "grm", "objective": "icrm", "reg_ratio": 0}))


def test_a_run_whose_producer_failed_is_not_started(data, tmp_path, monkeypatch):
    runs = build_runs(
        plan(
            data,
            tmp_path,
            {"experiment_name": "sft", "objective": "sft", "save_model": True},
            {"experiment_name": "rm", "objective": "icrm", "generator": "run:sft"},
            {"experiment_name": "other", "objective": "ex_rm"},
        )
    )
    started = []

    def fake_execute(spec):
        started.append(spec.name)
        return {"status": "failed" if spec.name == "sft" else "completed", "error": "boom"}

    import rm_exps.run

    monkeypatch.setattr(rm_exps.run, "execute_run", fake_execute)
    results = sweep.run_all(runs)
    assert started == ["sft", "other"]
    rm = next(r for r in results if r.spec.name == "rm")
    assert rm.status == "failed" and "needs run 'sft' (failed)" in rm.summary["error"]


def test_reference_option_names_point_to_ours(data, tmp_path):
    with pytest.raises(PlanError) as info:
        build_runs(
            plan(
                data,
                tmp_path,
                {
                    "experiment_name": "rm",
                    "objective": "icrm",
                    "reg_ratio": 0,
                    "weight_ratio": 0.001,
                    "temp_ratio": 1.0,
                    "bon_refrence": "first",
                },
            )
        )
    text = "\n".join(info.value.errors)
    assert "unknown field 'weight_ratio' (did you mean 'sft_grad_scale'?)" in text
    assert "unknown field 'temp_ratio' (did you mean 'generator_temperature'?)" in text
    assert "unknown field 'bon_refrence' (did you mean 'bon_reference'?)" in text


def _bon_plan(data, tmp_path, **config):
    return plan(
        data,
        tmp_path,
        {
            "experiment_name": "rm",
            "objective": "ex_rm",
            "bon_policy": "tiny-random-llama",
            "dpo_pairs_num_prompts": 4623,
            "num_test_samples": 2,
            **config,
        },
    )


def test_a_reward_model_trained_on_the_whole_train_split_leaves_no_dpo_prompts(tmp_path, capsys):
    """DPO pairs are sampled from train prompts the RM does not train on: training on every row is a
    plan error (exit 2, nothing run), with the split's size read from its metadata or its recipe."""
    import datasets

    import run_plan

    folder = tmp_path / "prepared"
    datasets.DatasetDict(
        {
            split: datasets.Dataset.from_list(
                [{"prompt": f"{split} {i}", "chosen": "a", "rejected": "b"} for i in range(n)]
            )
            for split, n in (("train", 6), ("test", 2))
        }
    ).save_to_disk(str(folder))
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(_bon_plan(str(folder), tmp_path, num_train_samples=-1)))
    assert run_plan.main(["--plan", str(path)]) == 2
    assert (
        "dpo_pairs_num_prompts 4623: no train prompt is left for DPO pairs: the train split has 6 rows, the reward "
        "model trains on all 6 of them (num_train_samples -1), and the prompts of all its training rows and the test "
        "prompts are excluded: 0 prompts remain, 4623 requested"
    ) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(PlanError, match="trains on all 6 of them \\(num_train_samples 6\\)"):
        build_runs(_bon_plan(str(folder), tmp_path, num_train_samples=6))
    assert build_runs(_bon_plan(str(folder), tmp_path, num_train_samples=4))  # 2 train prompts are left
    recipe = {"name": "arithmetic", "num_train_samples": 16, "num_test_samples": 4}
    with pytest.raises(
        PlanError,
        match="the train split has at most 16 rows, the reward model trains on all of them \\(num_train_samples 16\\)",
    ):
        build_runs(_bon_plan(recipe, tmp_path, num_train_samples=16, data_files_dir=str(tmp_path / "df")))
    assert build_runs(_bon_plan(recipe, tmp_path, num_train_samples=8, data_files_dir=str(tmp_path / "df")))


def test_no_dpo_prompts_left_at_run_time_says_the_same_numbers(tmp_path):
    """A subset can still exclude every train prompt (here the rows share one prompt): the run fails
    before sampling, with the numbers the plan check gives."""
    import run_plan
    from rm_exps.outputs import read_json

    folder = tmp_path / "pairs"
    folder.mkdir()
    (folder / "train.jsonl").write_text(
        "".join(json.dumps({"prompt": "q", "chosen": f"a{i}", "rejected": "b"}) + "\n" for i in range(4))
    )
    (folder / "test.jsonl").write_text(json.dumps({"prompt": "t", "chosen": "a", "rejected": "b"}) + "\n")
    path = tmp_path / "plan.json"
    path.write_text(
        json.dumps(_bon_plan(str(folder), tmp_path, num_train_samples=2, epochs=1, data_files_dir=str(tmp_path / "df")))
    )
    assert run_plan.main(["--plan", str(path)]) == 1
    error = read_json(tmp_path / "out" / "rm" / "summary.json")["error"]
    assert error == (
        "ValueError: dpo_pairs_num_prompts 4623: no train prompt is left for DPO pairs: the train split has "
        "4 rows, the reward model trains on 2 of them (num_train_samples 2), and 2 distinct prompts (its "
        "training prompts and the test prompts) are excluded: 0 prompts remain, 4623 requested; "
        "train the reward model on a subset (num_train_samples below the train split's size) so that train "
        "prompts are left over"
    )
