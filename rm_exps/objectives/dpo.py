"""DPO: a policy trained directly on preference pairs against a frozen reference (Rafailov et al. 2023)."""

from __future__ import annotations

from rm_exps.objectives.base import register
from rm_exps.objectives.im_rm import ImplicitRM


@register
class DPO(ImplicitRM):
    """Sigmoid DPO loss, with beta = kl_coeff and pi_ref a frozen copy of the starting policy:

        loss = -mean log sigmoid( beta * [ (log pi(y_c|x) - log pi_ref(y_c|x)) - (log pi(y_r|x) - log pi_ref(y_r|x)) ] )

    log-probabilities summed over the response tokens (end-of-turn included). The loss is the
    Bradley-Terry loss of the implicit reward, so it shares im_rm's computation (and its one-time
    reference log-probabilities); what differs is the product: a policy, evaluated by what it
    generates (`policy_eval_num_prompts`, judged by `judge_model`), saved with `save_model`.
    """

    name = "dpo"
    requires_reference_model = True
    # im_rm's computation would take it, but plans have so far refused share_prompt for dpo (the layout's
    # tests and bench/gpu_check cover ex_rm, im_rm and sft): accepting it is a change of its own
    supports_share_prompt = False
