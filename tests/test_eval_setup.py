"""The run's evaluators from its config: which kinds a run gets, and their validation order."""

from types import SimpleNamespace

from rm_exps.config import RunConfig
from rm_exps.eval.setup import Evaluators, setup_evaluators


def test_policy_evaluators_only_for_objectives_that_train_a_policy():
    """policy_eval_num_prompts asks for greedy responses of the trained policy: a reward model
    (trains_policy False) gets no policy evaluator, and nothing is sampled for it."""
    config = RunConfig(objective="ex_rm", policy_eval_num_prompts=2)
    reward_model = SimpleNamespace(trains_policy=False)
    data = SimpleNamespace(train=None, test=None)
    assert setup_evaluators(config, None, reward_model, data, None, "unused").in_order() == []


def test_pairwise_first_then_the_others_and_only_their_own_loaders_are_precomputed():
    persona = SimpleNamespace(loaders={"train": "persona-loader"})
    policy = SimpleNamespace()  # generates: no loaders of its own
    pairwise = SimpleNamespace(loaders={"test": "eval-loader"})  # the run's loaders, precomputed as the run's data
    evaluators = Evaluators(persona=persona, policy=policy)
    assert evaluators.own_loaders() == ["persona-loader"]
    evaluators.pairwise = pairwise
    assert evaluators.in_order() == [pairwise, persona, policy]
    assert evaluators.own_loaders() == ["persona-loader"]
