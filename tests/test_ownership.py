"""Who runs a run folder: a second sweep skips a run another one is running, `--status` tells a run
whose process is gone (`interrupted`) from a running one, and a per-run child dies with its parent."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from test_launch import REPO
from test_runner import write_pairs

import run_plan
from rm_exps.outputs import read_json
from rm_exps.ownership import OWNER, try_lock
from rm_exps.plan import build_runs, load_plan
from rm_exps.sweep import run_status


def tiny_plan(tmp_path, **fields):
    data = write_pairs(tmp_path / "pairs", n_train=8, n_test=4)
    base = {
        "experiment_name": "owned",
        "model": "tiny-random-llama",
        "dataset_path": data,
        "epochs": 1,
        "batch_size": 4,
        "num_test_samples": 4,
        "outputs_dir": str(tmp_path / "out"),
        "data_files_dir": str(tmp_path / "data_files"),
        **fields,
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"name": "owned", "configurations": [{"base_config": base}]}))
    return path


def test_a_second_sweep_skips_a_run_another_process_holds(tmp_path, capsys):
    plan = tiny_plan(tmp_path)
    run_dir = tmp_path / "out" / "owned"
    lock = try_lock(run_dir)  # as the first sweep would hold it
    try:
        assert try_lock(run_dir) is None
        assert run_plan.main(["--plan", str(plan)]) == 0  # not a failure
        assert not (run_dir / "summary.json").exists()
        assert "running elsewhere" in capsys.readouterr().out
    finally:
        lock.close()
    assert run_plan.main(["--plan", str(plan)]) == 0
    assert read_json(run_dir / "summary.json")["status"] == "completed"


def test_status_says_interrupted_when_the_owner_process_is_gone(tmp_path):
    plan = tiny_plan(tmp_path)
    spec = build_runs(load_plan(plan), {})[0]
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / "config.json").write_text(json.dumps(spec.config.flat()))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (spec.run_dir / OWNER).write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "process_start": 1.0}))
    state, detail = run_status(spec)
    assert state == "interrupted" and f"pid {gone.pid}" in detail and "starts again" in detail
    from rm_exps.ownership import write_owner

    write_owner(spec.run_dir)  # this process: alive
    assert run_status(spec)[0] == "running"


def alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # exited, not yet reaped by init: gone
    except psutil.NoSuchProcess:
        return False


def test_a_per_run_child_dies_with_its_parent(tmp_path):
    """SIGKILL the sweep (`--launcher python`): its child gets SIGTERM (PR_SET_PDEATHSIG), logs the
    interruption and exits, instead of training on unowned; --status then says interrupted."""
    plan = tiny_plan(tmp_path, epochs=500, num_test_samples=2)
    parent = subprocess.Popen(
        [sys.executable, "run_plan.py", "--plan", str(plan), "--launcher", "python"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    owner_file = tmp_path / "out" / "owned" / OWNER
    deadline = time.time() + 120
    while not owner_file.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert owner_file.exists(), "the child never started"
    child = json.loads(owner_file.read_text())["pid"]
    assert child != parent.pid
    time.sleep(1.0)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 30
    while time.time() < deadline and alive(child):
        time.sleep(0.2)
    if alive(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail("the child outlived its parent by 30 s")
    assert "interrupted" in (tmp_path / "out" / "owned" / "run.log").read_text()
    spec = build_runs(load_plan(plan), {})[0]
    assert run_status(spec)[0] == "interrupted"


def test_an_interrupted_rerun_keeps_the_previous_result(tmp_path):
    """--rerun of a finished run, SIGKILLed half-way: the finished summary, metrics and model wait in
    previous/; a rerun that finishes replaces them."""
    from test_launch import cli
    from test_resume import kill_env

    plan = tiny_plan(tmp_path, save_model=True, epochs=2, batch_size=2, checkpoint_every_steps=1)
    run_dir = tmp_path / "out" / "owned"
    assert run_plan.main(["--plan", str(plan)]) == 0
    finished = read_json(run_dir / "summary.json")
    killed = cli(sys.executable, "run_plan.py", "--plan", str(plan), "--rerun", env=kill_env(tmp_path, 2))
    assert killed.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists()
    assert read_json(run_dir / "previous" / "summary.json") == finished
    assert (run_dir / "previous" / "model" / "model.safetensors").exists()
    assert (run_dir / "previous" / "metrics.jsonl").exists()
    assert run_plan.main(["--plan", str(plan), "--rerun"]) == 0
    assert read_json(run_dir / "summary.json")["status"] == "completed"
    assert not (run_dir / "previous").exists()
