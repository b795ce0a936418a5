"""NeMo RL's DPO objective in plain torch: the SFT term the CPU trainer adds to TRL's preference
loss, and the whole objective on given log-probs (bench/gpu_check.py compares NeMo RL's own
DPOLossFn on a GPU with it; tests/unit/test_nemo_rl_loss.py the CPU trainer on a CPU).

NeMo RL v0.7.0 (nemo_rl/algorithms/loss/loss_functions.py, DPOLossFn with NLLLossFn(dpo_loss=True)),
per global batch of pairs:
    r = sum over trained tokens of (log pi - log pi_ref), / token count if preference_average_log_probs
    preference = mean over pairs of -log sigmoid(beta (r_chosen - r_rejected))
    sft = mean over pairs of the chosen reply's NLL, summed over its tokens, / its token count if
          sft_average_log_probs
    loss = preference_loss_weight * preference + sft_loss_weight * sft
The preference term is TRL's `sigmoid` (`sigmoid_norm` with the averaging). TRL's `sft` is not
NeMo RL's: it averages over all chosen tokens of a micro batch together (a long reply weighs more
than a short one), and has no summed form; so the trainer computes `sft_term` itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sft_term(per_token_logps: torch.Tensor, mask: torch.Tensor, average: bool) -> torch.Tensor:
    """The mean over a batch's pairs of the chosen replies' NLL. `per_token_logps` and `mask` are
    [2B, T], chosen rows first (TRL's batches: [chosen; rejected])."""
    chosen_logps, _ = per_token_logps.chunk(2, dim=0)
    chosen_mask, _ = mask.chunk(2, dim=0)
    nll = -(chosen_logps * chosen_mask).sum(dim=1)
    if average:
        nll = nll / chosen_mask.sum(dim=1).clamp(min=1)
    return nll.mean()


def preference_term(logratio_chosen: torch.Tensor, logratio_rejected: torch.Tensor, tokens_chosen: torch.Tensor,
                    tokens_rejected: torch.Tensor, beta: float, average: bool) -> torch.Tensor:
    """TRL's `sigmoid` (`sigmoid_norm` when `average`) on summed per-sequence log-ratios [B]."""
    if average:
        logratio_chosen = logratio_chosen / tokens_chosen.clamp(min=1)
        logratio_rejected = logratio_rejected / tokens_rejected.clamp(min=1)
    return (-F.logsigmoid(beta * (logratio_chosen - logratio_rejected))).mean()


def objective(policy_logps: torch.Tensor, reference_logps: torch.Tensor, mask: torch.Tensor, *, beta: float,
              preference_weight: float, sft_weight: float, preference_average: bool,
              sft_average: bool) -> dict[str, torch.Tensor]:
    """The whole loss of one batch from per-token log-probs [2B, T] (chosen rows first) of the policy
    and the reference, and the trained tokens' mask."""
    ratios = ((policy_logps - reference_logps) * mask).sum(dim=1)
    tokens = mask.sum(dim=1)
    (chosen, rejected), (tokens_chosen, tokens_rejected) = ratios.chunk(2), tokens.chunk(2)
    preference = preference_term(chosen, rejected, tokens_chosen, tokens_rejected, beta, preference_average)
    sft = sft_term(policy_logps, mask, sft_average) if sft_weight else torch.zeros_like(preference)
    return {"loss": preference_weight * preference + sft_weight * sft, "preference_loss": preference,
            "sft_loss": sft}
