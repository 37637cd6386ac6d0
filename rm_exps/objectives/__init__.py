"""Objectives, registered by name. Importing this package registers the built-in ones."""

from rm_exps.objectives import dpo, ex_rm, gen_rm, gram, icrm, im_rm, sft  # noqa: F401  (registration)
from rm_exps.objectives.base import OBJECTIVES, Objective, build_objective, register

__all__ = ["OBJECTIVES", "Objective", "build_objective", "register"]
