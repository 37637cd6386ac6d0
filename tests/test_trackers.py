"""Trackers and progress output: W&B offline run folders, TensorBoard scalars, plain logs off a TTY."""

import io
import json

import run_plan
from rm_exps.progress import interactive, progress
from rm_exps.trackers import tracker_errors


def tiny_plan(tmp_path, **fields):
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no", "split": split})
            for split in ("train", "test")
            for i in range(4)
        )
    )
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "configurations": [
                    {
                        "base_config": {
                            "experiment_name": "tracked",
                            "model": "tiny-random-llama",
                            "dataset_path": str(data),
                            "objective": "ex_rm",
                            "outputs_dir": str(tmp_path / "out"),
                            "epochs": 2,
                            "batch_size": 2,
                            "train_batch_log_interval": 1,
                            **fields,
                        }
                    }
                ]
            }
        )
    )
    return plan


def test_tensorboard_event_files_hold_the_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert run_plan.main(["--plan", str(tiny_plan(tmp_path, use_tensorboard=True))]) == 0
    events = EventAccumulator(str(tmp_path / "out" / "tracked" / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train loss", "eval test accuracy", "batch/train loss"} <= set(tags)
    assert [e.step for e in events.Scalars("eval test accuracy")] == [0, 1]


def test_wandb_offline_writes_its_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert run_plan.main(["--plan", str(tiny_plan(tmp_path, use_wandb=True))]) == 0
    runs = list((tmp_path / "out" / "tracked" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb")), "the offline run file with the logged metrics"


def test_missing_wandb_login_is_a_validation_error(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert any("no W&B login" in e for e in tracker_errors(True, False))


def test_progress_is_plain_when_not_a_tty():
    stream = io.StringIO()
    assert not interactive(stream)
    bar = progress(range(3), desc="epoch 1", stream=stream)
    assert list(bar) == [0, 1, 2]
    bar.set_postfix(loss="0.5")
    assert stream.getvalue() == ""


def test_progress_draws_on_a_tty():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    assert list(progress(range(3), desc="epoch 1", stream=stream)) == [0, 1, 2]
    assert "epoch 1" in stream.getvalue()
