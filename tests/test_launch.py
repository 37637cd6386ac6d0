"""Scale-out on CPU: a 2-process (gloo) run equals the 1-process run, per-run child processes isolate
a crash, parallel runs share the cores, submitit's local executor runs a plan."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_runner import write_pairs

import run_plan
from rm_exps.launch import Execution
from rm_exps.outputs import read_json
from rm_exps.sweep import execution_from_plan

REPO = Path(__file__).resolve().parents[1]


def tiny_plan(tmp_path: Path, names: list[str], **fields) -> Path:
    data = write_pairs(tmp_path / "pairs", n_train=8, n_test=6)
    base = {
        "experiment_name": "tiny_{objective}_{lr}",
        "model": "tiny-random-llama",
        "dataset_path": data,
        "outputs_dir": str(tmp_path / "out"),
        "epochs": 1,
        "batch_size": 4,
        "gradient_accumulation_steps": 1,
        "lr": 1e-3,
        "num_test_samples": 6,
        "eval_batch_size": 4,
        "random_seed": 7,
        "objective": "im_rm",
        **fields,
    }
    plan = {"name": "tiny", "configurations": [{"base_config": base, "options": {"experiment_name": names}}]}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


def cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*args], cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


def eval_values(summary: dict) -> dict[str, float]:
    return {k: v["value"] for k, v in summary["last_tracked_values"].items() if k.startswith("eval ")}


def test_two_process_run_matches_one_process_and_agrees_on_skipping(tmp_path):
    """torchrun --nproc_per_node 2 (gloo) with 2 pairs per process = 1 process with 4 pairs per batch."""
    plan = tiny_plan(tmp_path, ["two_procs"], batch_size=2)
    env = {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    launched = cli(
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "run_plan.py",
        "--plan",
        str(plan),
        env=env,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    two = read_json(tmp_path / "out" / "two_procs" / "summary.json")
    assert two["status"] == "completed" and two["environment"]["num_processes"] == 2
    assert launched.stdout.count("runs") == 1  # one results table: only the main process prints

    assert (
        run_plan.main(["--plan", str(plan), "--set", f"outputs_dir={tmp_path / 'one'}", "--set", "batch_size=4"]) == 0
    )
    one = read_json(tmp_path / "one" / "two_procs" / "summary.json")
    assert one["environment"]["num_processes"] == 1
    a, b = eval_values(two), eval_values(one)
    assert set(a) == set(b) and a
    for name in a:  # same global batch and data order; only the reduction order of floats differs
        assert a[name] == pytest.approx(b[name], rel=1e-4, abs=1e-5), name

    again = cli(
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "run_plan.py",
        "--plan",
        str(plan),
        env=env,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already completed, skipped" in again.stderr
    assert read_json(tmp_path / "out" / "two_procs" / "summary.json") == two


def test_per_run_accelerate_children_isolate_a_crash(tmp_path):
    """`--launcher accelerate --num-processes 2`: a run whose process dies (here: os._exit at start-up,
    as a segfault would) is recorded as failed with its exit status and last output lines; the next
    run still completes, on 2 processes (gloo)."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if any('crashing' in a for a in sys.argv):\n"
        "    print('native crash in a kernel', file=sys.stderr, flush=True)\n"
        "    os._exit(3)\n"
    )
    plan = tiny_plan(tmp_path, ["crashing", "fine"])
    env = {"PYTHONPATH": f"{hooks}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = cli(
        sys.executable,
        "run_plan.py",
        "--plan",
        str(plan),
        "--launcher",
        "accelerate",
        "--num-processes",
        "2",
        env={**env, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 1
    crashed = read_json(tmp_path / "out" / "crashing" / "summary.json")
    assert crashed["status"] == "failed" and crashed["exit_status"] == 3
    assert "native crash in a kernel" in crashed["stderr_tail"]
    assert "before writing a summary" in crashed["error"]
    fine = read_json(tmp_path / "out" / "fine" / "summary.json")
    assert fine["status"] == "completed" and fine["environment"]["num_processes"] == 2
    assert (tmp_path / "out" / "fine" / "child.log").stat().st_size > 0
    status = cli(sys.executable, "run_plan.py", "--plan", str(plan), "--status")
    assert "failed" in status.stdout and "completed" in status.stdout and "1 failed, 1 completed" in status.stdout


def test_parallel_cpu_runs_split_the_cores(tmp_path):
    plan = tiny_plan(tmp_path, ["left", "right"])
    data = json.loads(plan.read_text())
    data.update(multiprocess=True, num_parallel=2)
    plan.write_text(json.dumps(data))
    result = cli(sys.executable, "run_plan.py", "--plan", str(plan))
    assert result.returncode == 0, result.stderr[-3000:]
    threads = max(1, (os.cpu_count() or 1) // 2)
    for name in ("left", "right"):
        summary = read_json(tmp_path / "out" / name / "summary.json")
        assert summary["status"] == "completed"
        assert summary["environment"]["torch_threads"] == threads


def test_gpu_pool_is_shared_out_and_validated():
    execution = execution_from_plan({"multiprocess": True, "num_parallel": 2, "gpu_ids_pool": [0, 1, 2, 3, 4]})
    assert execution.launcher == "python" and execution.gpu_groups() == [[0, 1], [2, 3]]
    assert "every parallel run needs at least one GPU" in " ".join(
        execution_from_plan({"multiprocess": True, "num_parallel": 3, "gpu_ids_pool": [0, 1]}).errors()
    )
    assert "did you mean 'partition'" in " ".join(Execution(slurm={"partiton": "gpu"}).errors())
    # num_parallel is the reference's pool size, used only with multiprocess
    assert execution_from_plan({"num_parallel": 4}).num_parallel == 1


def test_submitit_local_executor_runs_a_plan(tmp_path):
    pytest.importorskip("submitit")
    plan = tiny_plan(tmp_path, ["job_a", "job_b"])
    result = cli(sys.executable, "run_plan.py", "--plan", str(plan), "--launcher", "slurm", "--slurm-cluster", "local")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("job_a", "job_b"):
        assert read_json(tmp_path / "out" / name / "summary.json")["status"] == "completed"
        assert read_json(tmp_path / "out" / name / "slurm_job.json")["cluster"] == "local"
    status = cli(sys.executable, "run_plan.py", "--plan", str(plan), "--status")
    assert "2 completed" in status.stdout and "job " in status.stdout


@pytest.mark.parametrize("name, precision", [("deepspeed_zero3.yaml", "no"), ("deepspeed_zero3_bf16.yaml", "bf16")])
def test_shipped_zero3_configs_parse_and_launch_runs(name, precision, tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    path = REPO / "experiment_plans" / "accelerate_configs" / name
    config = load_config_from_file(str(path))
    assert config.distributed_type == DistributedType.DEEPSPEED and config.mixed_precision == precision
    ds = config.deepspeed_config
    assert ds["zero_stage"] == 3 and ds["offload_param_device"] == "cpu" and ds["zero3_init_flag"] is True
    assert ds["zero3_save_16bit_model"] is True and ds["gradient_accumulation_steps"] == "auto"
    execution = Execution(launcher="accelerate", num_processes=4, accelerate_config=str(path))
    assert not execution.errors()
    from rm_exps.launch import child_command

    command = child_command(tmp_path / "launch_spec.json", execution, num_gpus=0)
    assert command[command.index("--config_file") + 1] == str(path) and "--multi_gpu" not in command
    assert command[command.index("--num_processes") + 1] == "4" and command[-3:-1] == ["-m", "rm_exps.worker"]


def test_two_processes_weigh_gram_pretrain_windows_by_all_their_tokens(tmp_path):
    """Token-weighted accumulation across processes: 2 processes x 1 pair x 2 accumulation steps take
    the step of 1 process x 2 pairs x 2 (the window's target tokens are summed over both processes)."""
    data = tmp_path / "varied"
    data.mkdir()
    for split, n in (("train", 8), ("test", 4)):
        rows = [{"prompt": f"Q{i}?", "chosen": "yes " * (i % 4 + 1), "rejected": "no"} for i in range(n)]
        (data / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    plan = tiny_plan(
        tmp_path,
        ["tokens"],
        objective="gram_pretrain",
        dataset_path=str(data),
        batch_size=1,
        gradient_accumulation_steps=2,
        judge_order="both",
        num_test_samples=4,
        optimizer="sgd",
        lr=2.0,
        score_metric_name="eval test loss",
        score_largest=False,
    )
    env = {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    launched = cli(
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "run_plan.py",
        "--plan",
        str(plan),
        env=env,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert (
        run_plan.main(["--plan", str(plan), "--set", f"outputs_dir={tmp_path / 'one'}", "--set", "batch_size=2"]) == 0
    )
    a = eval_values(read_json(tmp_path / "out" / "tokens" / "summary.json"))
    b = eval_values(read_json(tmp_path / "one" / "tokens" / "summary.json"))
    assert a and set(a) == set(b)
    for name in a:
        assert a[name] == pytest.approx(b[name], rel=1e-5), name
