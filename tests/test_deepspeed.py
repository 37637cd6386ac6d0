"""DeepSpeed ZeRO on 2 CPU processes (DeepSpeed's CPU accelerator, gloo), through the launch paths a
user types: `accelerate launch --config_file <shipped config> run_plan.py` and the per-run child
launcher. Every objective trains under ZeRO-3 and evaluates like the plain 2-process run; saving
gathers the partitioned weights; ZeRO-2 trains in bf16 mixed precision."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_launch import cli, eval_values
from test_runner import write_pairs

import run_plan
from rm_exps.models import resolve_model_path
from rm_exps.outputs import read_json

CONFIGS = Path(__file__).resolve().parents[1] / "experiment_plans" / "accelerate_configs"
OBJECTIVES = ["ex_rm", "im_rm", "gen_rm", "sft", "icrm", "dpo", "gram_pretrain", "gram_judge"]
ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> Path:
    """Every objective on the tiny model: 8 pairs, 2 per process per micro-batch, 2 accumulation steps
    (one optimizer step per epoch), ICRM with a generator and its SFT head, every model saved.

    Before the plan owned gradient clipping, DeepSpeed's default norm clip of 1.0 made gen_rm, sft,
    icrm and the GRAM objectives differ from the plain run by 5-90% here."""
    root = tmp_path_factory.mktemp("zero")
    data = write_pairs(root / "pairs", n_train=8, n_test=6)
    base = {
        "experiment_name": "z_{objective}",
        "model": "tiny-random-llama",
        "dataset_path": data,
        "outputs_dir": str(root / "plain"),
        "data_files_dir": str(root / "data_files"),
        "epochs": 2,
        "batch_size": 2,
        "gradient_accumulation_steps": 2,
        "lr": 1e-3,
        "num_test_samples": 6,
        "eval_batch_size": 2,
        "random_seed": 7,
        "generator": "tiny-random-llama",
        "save_model": True,
        "score_metric_name": "eval test loss",
        "score_largest": False,
    }
    path = root / "plan.json"
    path.write_text(
        json.dumps({"name": "zero", "configurations": [{"base_config": base, "options": {"objective": OBJECTIVES}}]})
    )
    return path


def launch(plan: Path, outputs: Path, *launcher: str) -> dict[str, dict]:
    """Run the plan under `launcher` into `outputs`; {objective: summary}. The launch must exit cleanly."""
    result = cli(*launcher, "run_plan.py", "--plan", str(plan), "--set", f"outputs_dir={outputs}", env=ENV)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "SIGABRT" not in output and "Aborted" not in output
    return {o: read_json(outputs / f"z_{o}" / "summary.json") for o in OBJECTIVES}


def accelerate_launch(config: str) -> tuple[str, ...]:
    return (
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--config_file",
        str(CONFIGS / config),
    )


@pytest.fixture(scope="module")
def plain(plan) -> dict[str, dict]:
    """The same plan on 2 plain CPU processes (torchrun, gloo, no DeepSpeed)."""
    result = cli(
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "run_plan.py",
        "--plan",
        str(plan),
        env={**ENV, "ACCELERATE_USE_CPU": "true"},
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return {o: read_json(plan.parent / "plain" / f"z_{o}" / "summary.json") for o in OBJECTIVES}


@pytest.fixture(scope="module")
def zero3(plan) -> dict[str, dict]:
    return launch(plan, plan.parent / "zero3", *accelerate_launch("deepspeed_zero3.yaml"))


def test_every_objective_trains_under_zero3_like_the_plain_two_process_run(plain, zero3):
    for objective in OBJECTIVES:
        z, p = zero3[objective], plain[objective]
        assert z["status"] == "completed", (objective, z.get("error"))
        env = z["environment"]
        assert (env["distributed_type"], env["zero_stage"], env["num_processes"]) == ("DEEPSPEED", 3, 2), objective
        assert p["environment"]["distributed_type"] == "MULTI_CPU"
        a, b = eval_values(z), eval_values(p)
        assert set(a) == set(b) and a, objective
        for name in a:  # same data order and global batch; partitioned reductions change float order only
            assert a[name] == pytest.approx(b[name], rel=2e-3, abs=1e-5), (objective, name)
        assert z["train_tokens"] == p["train_tokens"] > 0


def saved_weights(summary_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(summary_dir / "model" / "model.safetensors"))


def test_zero3_save_model_gathers_the_full_weights(plan, plain, zero3):
    """The saved IM-RM policy equals the plain run's (full tensors, not shards), and a saved EX-RM
    reloads (one process, evaluation only) to the rewards its ZeRO-3 run reported."""
    root = plan.parent
    z, p = saved_weights(root / "zero3" / "z_im_rm"), saved_weights(root / "plain" / "z_im_rm")
    assert set(z) == set(p)
    for name in z:
        assert z[name].shape == p[name].shape and z[name].numel() > 0, name
        assert torch.allclose(z[name], p[name], atol=1e-6), name
    initial = load_file(f"{resolve_model_path('tiny-random-llama')}/model.safetensors")
    assert not torch.equal(z["model.layers.0.mlp.up_proj.weight"], initial["model.layers.0.mlp.up_proj.weight"])

    base = json.loads(plan.read_text())["configurations"][0]["base_config"]
    reload_plan = root / "reload.json"
    reload_plan.write_text(
        json.dumps(
            {
                "name": "reload",
                "configurations": [
                    {
                        "base_config": {
                            **base,
                            "experiment_name": "reloaded",
                            "objective": "ex_rm",
                            "model": str(root / "zero3" / "z_ex_rm" / "model"),
                            "epochs": 0,
                            "save_model": False,
                            "outputs_dir": str(root / "reload"),
                        }
                    }
                ],
            }
        )
    )
    assert run_plan.main(["--plan", str(reload_plan)]) == 0
    reloaded = eval_values(read_json(root / "reload" / "reloaded" / "summary.json"))
    trained = eval_values(zero3["ex_rm"])
    for name in ("eval test chosen reward", "eval test rejected reward", "eval test accuracy", "eval test loss"):
        assert reloaded[name] == pytest.approx(trained[name], rel=1e-4, abs=1e-6), name


def test_zero2_trains_in_bf16_mixed_precision(plan, plain):
    """The shipped ZeRO-2 bf16 config: plans at precision `auto` train in bf16 (DeepSpeed's fp32
    master weights), close to the fp32 run to bf16 accuracy."""
    zero2 = launch(plan, plan.parent / "zero2", *accelerate_launch("deepspeed_zero2_bf16.yaml"))
    for objective in OBJECTIVES:
        z = zero2[objective]
        assert z["status"] == "completed", (objective, z.get("error"))
        env = z["environment"]
        assert (env["distributed_type"], env["zero_stage"], env["precision"]) == ("DEEPSPEED", 2, "bf16"), objective
        a, b = eval_values(z)["eval test loss"], eval_values(plain[objective])["eval test loss"]
        assert a == pytest.approx(b, rel=1e-2), objective


CHUNKED = [o for o in OBJECTIVES if o != "icrm"]  # icrm's consistency term refuses chunks


def test_chunked_batches_under_zero3_train_like_the_plain_whole_batches(plan, plain):
    """micro_batch_size 1 under ZeRO-3: each batch's first chunk is no accumulation boundary, so the
    engine steps once per window, as the plain run with whole batches."""
    spec = json.loads(plan.read_text())
    spec["configurations"][0]["base_config"]["micro_batch_size"] = 1
    spec["configurations"][0]["options"]["objective"] = CHUNKED
    chunked_plan = plan.parent / "chunked_plan.json"
    chunked_plan.write_text(json.dumps(spec))
    outputs = plan.parent / "zero3_chunked"
    result = cli(
        *accelerate_launch("deepspeed_zero3.yaml"),
        "run_plan.py",
        "--plan",
        str(chunked_plan),
        "--set",
        f"outputs_dir={outputs}",
        env=ENV,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    for objective in CHUNKED:
        z, p = read_json(outputs / f"z_{objective}" / "summary.json"), plain[objective]
        assert z["status"] == "completed", (objective, z.get("error"))
        assert z["environment"]["distributed_type"] == "DEEPSPEED"
        a, b = eval_values(z), eval_values(p)
        assert set(a) == set(b) and a, objective
        for name in a:
            assert a[name] == pytest.approx(b[name], rel=2e-3, abs=1e-5), (objective, name)


def test_the_child_launcher_runs_a_run_under_zero3(plan, zero3):
    """`--launcher accelerate --accelerate-config <ZeRO-3 config>`: the child is a DeepSpeed launch
    (not plain CPU processes) and computes what the in-process ZeRO-3 launch computed."""
    outputs = plan.parent / "child"
    one_run = plan.parent / "one_run.json"
    base = json.loads(plan.read_text())["configurations"][0]["base_config"]
    one_run.write_text(
        json.dumps(
            {
                "name": "child",
                "configurations": [{"base_config": {**base, "objective": "ex_rm", "outputs_dir": str(outputs)}}],
            }
        )
    )
    result = cli(
        sys.executable,
        "run_plan.py",
        "--plan",
        str(one_run),
        "--launcher",
        "accelerate",
        "--num-processes",
        "2",
        "--accelerate-config",
        str(CONFIGS / "deepspeed_zero3.yaml"),
        env=ENV,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    child = read_json(outputs / "z_ex_rm" / "summary.json")
    env = child["environment"]
    assert (env["distributed_type"], env["zero_stage"], env["num_processes"]) == ("DEEPSPEED", 3, 2)
    a, b = eval_values(child), eval_values(zero3["ex_rm"])
    for name in a:
        assert a[name] == pytest.approx(b[name], rel=1e-6, abs=1e-9), name


def test_a_killed_zero3_run_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL after the 3rd checkpoint of an IM-RM run under ZeRO-3 (2 processes): accelerate's state
    saving writes every rank's shards and optimizer partitions, and the same command resumes."""
    from test_resume import assert_same_run, plan_file, run_killed_then_resumed

    launcher = accelerate_launch("deepspeed_zero3.yaml")
    common = dict(
        objective="im_rm",
        batch_size=1,
        save_model=True,
        checkpoint_every_steps=1,
        lr_scheduler_type="linear",
        warmup_steps=1,
        max_grad_norm=1.0,
    )
    run_killed_then_resumed(tmp_path, plan_file(tmp_path, "killed", **common), 3, launcher, ENV)
    result = cli(*launcher, "run_plan.py", "--plan", str(plan_file(tmp_path, "uninterrupted", **common)), env=ENV)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert read_json(tmp_path / "out" / "uninterrupted" / "summary.json")["environment"]["zero_stage"] == 3
    assert_same_run(tmp_path / "out" / "killed", tmp_path / "out" / "uninterrupted")
