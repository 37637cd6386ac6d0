"""A new objective is one new module: IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand
Learning from Human Preferences", eq. 17) on top of DPO, written into a temporary package, registers on
import and runs a plan end to end through the normal path (policy evaluation and share_prompt included),
without an edit anywhere else: the plan, the run and the evaluators ask the objective what it is."""

import json
import sys
import textwrap

import pytest
import torch

import run_plan
from rm_exps.batching import REF_LOGPS
from rm_exps.config import RunConfig
from rm_exps.objectives import OBJECTIVES, build_objective
from rm_exps.outputs import read_json
from rm_exps.plan import PlanError, build_runs

IPO_MODULE = '''
"""IPO: DPO's policy and reference, with the squared loss of Azar et al. (2023), eq. 17:

    h = [log pi(y_c|x) - log pi_ref(y_c|x)] - [log pi(y_r|x) - log pi_ref(y_r|x)]
    loss = mean (h - 1 / (2 tau))^2,   tau = kl_coeff

(log-probabilities summed over the response tokens, as DPO's). It regresses the margin to 1/(2 tau)
instead of pushing it to infinity."""

from rm_exps.lazy import LazyModule
from rm_exps.objectives import register
from rm_exps.objectives.dpo import DPO

torch = LazyModule("torch")


@register
class IPO(DPO):
    name = "ipo"
    supports_share_prompt = True  # im_rm's computation, whose read-out does not depend on the layout

    def loss(self, model, batch):
        r_c, r_r = self.rewards(model, batch)  # kl_coeff * log-ratios
        tau = self.config.kl_coeff
        h = (r_c - r_r) / tau
        loss = ((h - 1 / (2 * tau)) ** 2).mean()
        return loss, {**self.train_metrics(loss, r_c, r_r), "log-ratio margin": h.detach().mean()}
'''


@pytest.fixture
def ipo(tmp_path, monkeypatch):
    """The IPO module in a temporary package, imported (so registered); unregistered afterwards."""
    package = tmp_path / "extra_objectives"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "ipo.py").write_text(textwrap.dedent(IPO_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import extra_objectives.ipo as module

    yield module.IPO
    OBJECTIVES.pop("ipo", None)
    for name in ("extra_objectives.ipo", "extra_objectives"):
        sys.modules.pop(name, None)


class LogProbs(torch.nn.Module):
    """Stands in for the policy: the summed response log-probabilities of the 2B rows, given."""

    def __init__(self, logps):
        super().__init__()
        self.logps = torch.tensor(logps, dtype=torch.float64)

    def forward(self, **_):
        return self.logps


def test_ipo_loss_on_a_hand_made_batch(ipo):
    """h = (logp_c - ref_c) - (logp_r - ref_r): pair 1: (-1 + 1.5) - (-3 + 2.5) = 1, pair 2: (-2 + 2) - (-2.5 + 2) =
    0.5; with tau = 0.5 the target 1/(2 tau) = 1, so the losses are 0 and 0.25: mean 0.125."""
    objective = ipo(RunConfig(objective="ipo", kl_coeff=0.5), tokenizer=None)
    policy = LogProbs([-1.0, -2.0, -3.0, -2.5])  # chosen rows, then rejected rows
    batch = {"input_ids": torch.zeros(4, 1, dtype=torch.long), REF_LOGPS: torch.tensor([-1.5, -2.0, -2.5, -2.0])}
    loss, metrics = objective.loss(policy, batch)
    assert loss.item() == pytest.approx(0.125)
    assert metrics["log-ratio margin"].item() == pytest.approx(0.75)
    # at h = 1/(2 tau) the loss is 0 whatever the scale of the log-probs
    at_target = LogProbs([0.0, 0.0, -1.0, -1.0])
    assert objective.loss(at_target, {"input_ids": batch["input_ids"], REF_LOGPS: torch.zeros(4)})[0].item() == 0


def test_ipo_has_dpo_capabilities_and_rules(ipo, tmp_path):
    assert build_objective(RunConfig(objective="ipo"), tokenizer=None).__class__ is ipo
    assert ipo.trains_policy and ipo.requires_reference_model and ipo.supports_share_prompt
    plan = {
        "configurations": [
            {"base_config": {"objective": "ipo", "no_ref_model": True, "dataset_path": str(tmp_path / "missing")}}
        ]
    }
    with pytest.raises(PlanError, match="objective ipo needs its reference model: no_ref_model must be false"):
        build_runs(plan)


def write_pairs(folder, n_train=6, n_test=4):
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        rows = [
            {"prompt": f"What is {i} + 1?", "chosen": str(i + 1), "rejected": str(i + 2), "answer": str(i + 1)}
            for i in range(n)
        ]
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return str(folder)


def test_ipo_plan_end_to_end(ipo, tmp_path):
    """A tiny IPO plan through run_plan.main: trains with share_prompt, evaluates the trained policy
    against the starting one (policy_eval_num_prompts), and reports its score."""
    out = tmp_path / "out"
    config = {
        "experiment_name": "ipo_tiny",
        "objective": "ipo",
        "model": "tiny-random-llama",
        "dataset_path": write_pairs(tmp_path / "pairs"),
        "outputs_dir": str(out),
        "data_files_dir": str(tmp_path / "data_files"),
        "share_prompt": True,
        "kl_coeff": 0.1,
        "epochs": 1,
        "batch_size": 2,
        "lr": 1e-3,
        "num_test_samples": 4,
        "policy_eval_num_prompts": 2,
        "bon_max_new_tokens": 4,
        "bon_batch_size": 2,
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"name": "ipo", "configurations": [{"base_config": config}]}))
    assert run_plan.main(["--plan", str(path)]) == 0
    summary = read_json(out / "ipo_tiny" / "summary.json")
    values = summary["last_tracked_values"]
    assert summary["status"] == "completed" and summary["score_name"] == "eval test accuracy"
    assert 0 <= summary["score"] <= 1
    assert "train log-ratio margin" in values  # IPO's own train metric: its loss trained the run
    assert "eval policy accuracy" in values and "eval policy start accuracy" in values
