"""Policy-gradient advantages for one batch of k completions per prompt (pure tensor functions).

Paper B's Eq. 1 (REINFORCE Leave-One-Out, Kool et al. 2019): for the k completions of one prompt,

    A_i = r_i - 1/(k-1) * sum_{j != i} r_j

and the two alternatives the paper discusses:

- ``greedy`` (SCST, Rennie et al. 2017): A_i = r_i - r_greedy, the reward of the greedy decode of
  the same prompt (one extra generation per prompt);
- ``none`` (plain REINFORCE): A_i = r_i.

All three are unbiased estimators of the same policy gradient (none of the baselines depends on
the completion it is subtracted from); they differ in variance, which kit/rl/variance.py measures.

TRL's RLOOTrainer computes the leave-one-out advantage inline in `_generate_and_score_completions`
and has no switch for other baselines, so they are written here (a few lines each) and
kit/rl/trainer.py swaps them in. Rewards are `(n_prompts, k)`; NaN marks an unscorable completion
(a reward function returned None), which, as in TRL, is left out of the baselines and gets
advantage 0.
"""
from __future__ import annotations

import torch

BASELINES = ("rloo", "greedy", "none")


def group(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Flat rewards in TRL's order (prompt-major: k consecutive completions per prompt) -> (n, k)."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards.dim() != 1 or rewards.numel() % k != 0:
        raise ValueError(f"kit/rl/advantages.py: rewards: expected a flat tensor whose length is a multiple of "
                         f"k={k}, got shape {tuple(rewards.shape)}")
    return rewards.view(-1, k)


def _check(rewards: torch.Tensor) -> torch.Tensor:
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards.dim() != 2:
        raise ValueError(f"kit/rl/advantages.py: rewards: expected shape (n_prompts, k), got {tuple(rewards.shape)}")
    return rewards


def leave_one_out_baseline(rewards: torch.Tensor) -> torch.Tensor:
    """b_i = mean of the other scorable rewards of the same prompt (NaN where fewer than 2 are scorable)."""
    r = _check(rewards)
    if r.size(1) < 2:
        raise ValueError(f"kit/rl/advantages.py: leave-one-out needs k >= 2 completions per prompt, got k={r.size(1)}")
    scorable = (~torch.isnan(r)).sum(dim=1, keepdim=True).float()
    total = torch.nansum(r, dim=1, keepdim=True)
    return (total - torch.nan_to_num(r, nan=0.0)) / (scorable - 1)


def leave_one_out(rewards: torch.Tensor) -> torch.Tensor:
    """Paper B's Eq. 1: A_i = r_i - mean_{j != i} r_j, per prompt. Shape (n, k) -> (n, k).

    Three descriptions of one image, rewarded 1.0, 0.0 and 0.5: each is scored against the mean of
    the other two, so the group's advantages sum to zero and no learned critic is needed.

    >>> leave_one_out(torch.tensor([[1.0, 0.0, 0.5]]))
    tensor([[ 0.7500, -0.7500,  0.0000]])
    """
    r = _check(rewards)
    return torch.nan_to_num(r - leave_one_out_baseline(r), nan=0.0)


def greedy_baseline(rewards: torch.Tensor, greedy_rewards: torch.Tensor) -> torch.Tensor:
    """SCST: A_i = r_i - r(greedy decode of the same prompt). greedy_rewards: (n,)."""
    r = _check(rewards)
    g = torch.as_tensor(greedy_rewards, dtype=torch.float32).reshape(-1)
    if g.numel() != r.size(0):
        raise ValueError(f"kit/rl/advantages.py: greedy_rewards: expected one reward per prompt ({r.size(0)}), "
                         f"got {g.numel()}")
    return torch.nan_to_num(r - g[:, None], nan=0.0)


def no_baseline(rewards: torch.Tensor) -> torch.Tensor:
    """Plain REINFORCE: A_i = r_i."""
    return torch.nan_to_num(_check(rewards).clone(), nan=0.0)


def compute_advantages(rewards: torch.Tensor, baseline: str = "rloo",
                       greedy_rewards: torch.Tensor | None = None) -> torch.Tensor:
    """Advantages of the named estimator (`rloo` | `greedy` | `none`) for rewards of shape (n, k)."""
    if baseline == "rloo":
        return leave_one_out(rewards)
    if baseline == "greedy":
        if greedy_rewards is None:
            raise ValueError("kit/rl/advantages.py: baseline 'greedy' (SCST) needs greedy_rewards, one per prompt")
        return greedy_baseline(rewards, greedy_rewards)
    if baseline == "none":
        return no_baseline(rewards)
    raise ValueError(f"rloo.baseline: expected one of {', '.join(BASELINES)}, got {baseline!r}")


def best_of_k(rewards: torch.Tensor) -> torch.Tensor:
    """Per prompt, the highest reward among its k completions (paper B's Fig. 6 'best-of-k'). (n, k) -> (n,)."""
    r = _check(rewards)
    return torch.nan_to_num(r, nan=float("-inf")).max(dim=1).values
