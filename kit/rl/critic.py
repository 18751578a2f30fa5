"""A learned baseline: paper B's Appendix A (Algorithm 4) trains REINFORCE with a small MLP critic.

The critic V(s) predicts the reward a prompt's completions get, from the prompt alone (here the reward
model's embedding of its image), and is fitted by mean squared error to the rewards observed, the
"advantage actor-critic" (A2C) baseline: A_i = r_i - V(s). Since V never sees the completion it is
subtracted from, the estimator stays unbiased; how much variance it removes depends on how well V
knows each prompt's mean reward, which RLOO's leave-one-out mean gets without training anything
(kit/rl/variance.py compares the two on the same batches).

Four images whose completions score around 0.1, 0.3, 0.5 and 0.7: the critic learns those means.

>>> import torch
>>> feats = torch.eye(4).repeat_interleave(8, dim=0)              # 4 prompts x 8 completions
>>> rewards = torch.tensor([0.1, 0.3, 0.5, 0.7]).repeat_interleave(8) + 0.05 * torch.randn(32)
>>> critic = fit_critic(feats, rewards, seed=0)
>>> [round(v, 1) for v in critic(torch.eye(4)).tolist()]
[0.1, 0.3, 0.5, 0.7]
"""
from __future__ import annotations

import torch
from torch import nn


class Critic(nn.Module):
    """V(s): a two-layer MLP from a prompt's features to its expected reward."""

    def __init__(self, in_dim: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def fit_critic(features: torch.Tensor, rewards: torch.Tensor, *, hidden: int = 64, steps: int = 300,
               lr: float = 1e-2, seed: int = 0) -> Critic:
    """A Critic fitted to (features[i], rewards[i]) pairs by full-batch Adam on the squared error.
    NaN rewards (unscorable completions) are left out. Seeded by its own generator: the global RNGs
    are not touched."""
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(rewards, dtype=torch.float32).reshape(-1)
    if x.dim() != 2 or x.size(0) != y.numel():
        raise ValueError(f"fit_critic: expected features (n, d) and n rewards, got {tuple(x.shape)} and {y.numel()}")
    keep = ~torch.isnan(y)
    x, y = x[keep], y[keep]
    gen = torch.Generator().manual_seed(seed)
    critic = Critic(x.size(1), hidden)
    with torch.no_grad():
        for p in critic.parameters():  # initialised from its own generator, not the global one
            p.copy_(torch.empty_like(p).uniform_(-1, 1, generator=gen) / max(p.shape[-1], 1) ** 0.5)
        critic.net[-1].bias.fill_(float(y.mean()) if y.numel() else 0.0)
    opt = torch.optim.Adam(critic.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            loss = ((critic(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
    critic.eval()
    return critic


def critic_baseline(rewards: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A2C's advantages: A_i = r_i - V(s) for each of a prompt's k completions. rewards (n, k), values (n,);
    NaN rewards get advantage 0, as in TRL.

    >>> critic_baseline(torch.tensor([[1.0, 0.0, 0.5]]), torch.tensor([0.4]))
    tensor([[ 0.6000, -0.4000,  0.1000]])
    """
    r = torch.as_tensor(rewards, dtype=torch.float32)
    v = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    if r.dim() != 2 or v.numel() != r.size(0):
        raise ValueError(f"critic_baseline: expected rewards (n, k) and n values, got {tuple(r.shape)} and {v.numel()}")
    return torch.nan_to_num(r - v[:, None], nan=0.0)
