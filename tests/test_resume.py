"""The training recipe (schedules, clipping, optimizer knobs) and runs that survive being killed:
a run killed with SIGKILL after a checkpoint, run again with the same command, ends exactly where
the uninterrupted run ends."""

import json
import math
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_launch import REPO, cli
from test_runner import write_pairs
from transformers import get_scheduler

import run_plan
from rm_exps.checkpoint import CHECKPOINTS_DIR
from rm_exps.models import resolve_model_path
from rm_exps.outputs import read_json

# Kills the process (SIGKILL, as the OOM killer or a preempting scheduler would) right after its
# RM_EXPS_TEST_KILL_AFTER-th checkpoint is complete.
KILL_HOOK = """
import os, signal
after = int(os.environ.get("RM_EXPS_TEST_KILL_AFTER", "0"))
if after:
    import rm_exps.checkpoint as checkpoint
    save, saved = checkpoint.save_checkpoint, []
    def save_then_die(*args, **kwargs):
        path = save(*args, **kwargs)
        saved.append(path)
        if len(saved) == after:
            os.kill(os.getpid(), signal.SIGKILL)
        return path
    checkpoint.save_checkpoint = save_then_die
    import rm_exps.run
    rm_exps.run.save_checkpoint = save_then_die
"""


def plan_file(tmp_path: Path, name: str, **fields) -> Path:
    data = (
        write_pairs(tmp_path / "pairs", n_train=8, n_test=4)
        if not (tmp_path / "pairs").exists()
        else str(tmp_path / "pairs")
    )
    base = {
        "experiment_name": name,
        "model": "tiny-random-llama",
        "dataset_path": data,
        "outputs_dir": str(tmp_path / "out"),
        "data_files_dir": str(tmp_path / "data_files"),
        "epochs": 2,
        "batch_size": 2,
        "gradient_accumulation_steps": 2,
        "lr": 1e-3,
        "num_test_samples": 4,
        "random_seed": 11,
        "train_batch_log_interval": 1,
        "score_metric_name": "eval test loss",
        "score_largest": False,
        **fields,
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"name": name, "configurations": [{"base_config": base}]}))
    return path


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.mark.parametrize(
    "schedule,kwargs",
    [("linear", {}), ("cosine", {}), ("constant_with_warmup", {}), ("cosine_with_min_lr", {"min_lr_rate": 0.1})],
)
def test_each_step_uses_the_schedule_of_get_scheduler(tmp_path, schedule, kwargs):
    """8 pairs, micro-batches of 2, accumulation 2: 2 optimizer steps per epoch, 3 epochs = 6 steps,
    warm-up ceil(0.3 * 6) = 2; every micro-batch of a window logs the rate its window steps with."""
    plan = plan_file(
        tmp_path,
        "sched",
        epochs=3,
        lr_scheduler_type=schedule,
        lr_scheduler_kwargs=kwargs,
        warmup_ratio=0.3,
        weight_decay=0.1,
        adam_beta2=0.99,
        adam_epsilon=1e-6,
    )
    assert run_plan.main(["--plan", str(plan)]) == 0
    logged = [r["train lr"] for r in records(tmp_path / "out" / "sched", "train_batch")]
    assert len(logged) == 12
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    expected = []
    scheduler = get_scheduler(
        schedule, optimizer, num_warmup_steps=2, num_training_steps=6, scheduler_specific_kwargs=kwargs
    )
    for _ in range(6):
        expected += [optimizer.param_groups[0]["lr"]] * 2  # both micro-batches of the window
        optimizer.step()
        scheduler.step()
    assert logged == pytest.approx(expected, rel=1e-12, abs=0)
    assert logged[0] == 0.0 and max(logged) == pytest.approx(1e-3)


def test_max_grad_norm_clips_the_step(tmp_path):
    """SGD at lr 1 with max_grad_norm 1e-3: the whole update has norm <= 1e-3, while the logged
    (pre-clipping) norm is far larger."""
    plan = plan_file(
        tmp_path,
        "clip",
        epochs=1,
        batch_size=8,
        gradient_accumulation_steps=1,
        optimizer="sgd",
        lr=1.0,
        max_grad_norm=1e-3,
        save_model=True,
        objective="im_rm",
    )
    assert run_plan.main(["--plan", str(plan)]) == 0
    summary = read_json(tmp_path / "out" / "clip" / "summary.json")
    logged = summary["last_tracked_values"]["train grad norm"]["value"]
    assert logged > 1e-2
    before = load_file(f"{resolve_model_path('tiny-random-llama')}/model.safetensors")
    after = load_file(str(tmp_path / "out" / "clip" / "model" / "model.safetensors"))
    squared = sum(((after[k][: v.shape[0]] - v) ** 2).sum().item() for k, v in before.items())
    assert 0 < math.sqrt(squared) <= 1e-3 * (1 + 1e-4)


def kill_env(tmp_path: Path, kill_after: int) -> dict[str, str]:
    """Environment under which a run_plan.py process SIGKILLs itself after its `kill_after`-th checkpoint."""
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(KILL_HOOK)
    # site imports sitecustomize before the script's folder is on sys.path: name the repository too
    return {
        "PYTHONPATH": os.pathsep.join([str(hooks), str(REPO), os.environ.get("PYTHONPATH", "")]),
        "RM_EXPS_TEST_KILL_AFTER": str(kill_after),
    }


def run_killed_then_resumed(
    tmp_path: Path, plan: Path, kill_after: int, launcher: tuple[str, ...], env: dict | None = None
) -> str:
    """Run `plan` until its `kill_after`-th checkpoint (then SIGKILL), then run it again; the second
    run's stderr."""
    killed = cli(*launcher, "run_plan.py", "--plan", str(plan), env={**(env or {}), **kill_env(tmp_path, kill_after)})
    assert killed.returncode != 0, killed.stderr[-2000:]
    name = json.loads(plan.read_text())["name"]
    run_dir = tmp_path / "out" / name
    assert not (run_dir / "summary.json").exists() and (run_dir / CHECKPOINTS_DIR).is_dir()
    resumed = cli(*launcher, "run_plan.py", "--plan", str(plan), env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    return resumed.stderr


def assert_same_run(a: Path, b: Path) -> None:
    """Same final parameters (to 1e-6), the same metrics records, the same summary values."""
    wa, wb = load_file(str(a / "model" / "model.safetensors")), load_file(str(b / "model" / "model.safetensors"))
    assert set(wa) == set(wb)
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-6, rtol=0), key
    ra = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["global_step"]) for r in ra] == [(r["kind"], r["global_step"]) for r in rb]  # no step twice
    for x, y in zip(ra, rb):
        for key, value in x.items():
            assert value == pytest.approx(y[key], rel=1e-6, abs=1e-9), (x["kind"], x["global_step"], key)
    sa, sb = read_json(a / "summary.json"), read_json(b / "summary.json")
    assert sa["status"] == sb["status"] == "completed"
    for key, value in sa["last_tracked_values"].items():
        assert value["value"] == pytest.approx(sb["last_tracked_values"][key]["value"], rel=1e-6, abs=1e-9), key
    assert not (a / CHECKPOINTS_DIR).exists()  # a completed run keeps its result, not its checkpoints


# icrm: dropout (RNG state), the running normalizer (objective state), generator probabilities;
# gram_judge: the seeded A/B coin of its collator, with length-grouped batches. Killed after the 3rd
# checkpoint (mid-epoch 2) and after the 2nd (the end of epoch 1, after its validation).
@pytest.mark.parametrize(
    "objective,kill_after,fields",
    [
        ("icrm", 3, {"generator": "tiny-random-llama"}),
        ("gram_judge", 2, {"group_by_length": True}),
    ],
)
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, objective, kill_after, fields):
    common = dict(
        objective=objective,
        save_model=True,
        checkpoint_every_steps=1,
        lr_scheduler_type="cosine",
        warmup_ratio=0.25,
        max_grad_norm=1.0,
        **fields,
    )
    plan = plan_file(tmp_path, "killed", **common)
    stderr = run_killed_then_resumed(tmp_path, plan, kill_after, (sys.executable,))
    assert ("micro-batch 2" in stderr) == (kill_after == 3)
    reference = plan_file(tmp_path, "uninterrupted", **common)
    assert run_plan.main(["--plan", str(reference)]) == 0
    assert_same_run(tmp_path / "out" / "killed", tmp_path / "out" / "uninterrupted")


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_result(tmp_path):
    """The same under torchrun with 2 processes (gloo): every rank restores its own state."""
    env = {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2")
    common = dict(
        objective="ex_rm",
        batch_size=1,
        save_model=True,
        checkpoint_every_steps=1,
        lr_scheduler_type="linear",
        warmup_steps=1,
    )
    plan = plan_file(tmp_path, "killed", **common)
    run_killed_then_resumed(tmp_path, plan, 3, torchrun, env)
    reference = plan_file(tmp_path, "uninterrupted", **common)
    result = cli(*torchrun, "run_plan.py", "--plan", str(reference), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(tmp_path / "out" / "killed", tmp_path / "out" / "uninterrupted")


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    """Killed after its 3rd checkpoint (steps 1, 2 = end of epoch 1, 3) with checkpoint_keep 2."""
    plan = plan_file(tmp_path, "keep", checkpoint_every_steps=1, checkpoint_keep=2)
    killed = cli(sys.executable, "run_plan.py", "--plan", str(plan), env=kill_env(tmp_path, 3))
    assert killed.returncode == -signal.SIGKILL
    kept = sorted(p.name for p in (tmp_path / "out" / "keep" / CHECKPOINTS_DIR).iterdir())
    assert kept == ["step_2", "step_3"]


def test_a_preempted_slurm_job_requeues_the_same_command():
    """submitit asks a Checkpointable what to resubmit when SLURM preempts or times out the job: the
    same call, which then resumes from the run's checkpoint."""
    from submitit.helpers import DelayedSubmission

    from rm_exps.slurm_job import SlurmRun

    job = SlurmRun()
    command = [sys.executable, "-m", "rm_exps.worker", "run/launch_spec.json"]
    delayed = job.checkpoint(command, "run")
    assert isinstance(delayed, DelayedSubmission)
    assert delayed.function is job and delayed.args == (command, "run")
