"""Objectives, registered by name. Importing this package registers the built-in ones (and imports no
torch: see base.py); a new objective is a module that subclasses `Objective` and calls `register`."""

from rm_exps.objectives import dpo, ex_rm, gen_rm, gram, icrm, im_rm, sft  # noqa: F401  (registration)
from rm_exps.objectives.base import OBJECTIVES, Objective, build_objective, names_with, register
from rm_exps.objectives.ex_rm import ExplicitRM

DEFAULT_OBJECTIVE = ExplicitRM.name  # what a run config without `objective` trains

__all__ = ["DEFAULT_OBJECTIVE", "OBJECTIVES", "Objective", "build_objective", "names_with", "register"]
