"""Noise and weighting schedules of the consistency term of ACT (paper 2.2, Algorithm 1).

The paper sets the step schedule N(k), the noise schedule sigma(k) and the weight lambda_consist(k) "the same as
the consistency model experience [8] [17]". We follow improved consistency training (iCT, Song & Dhariwal [17]):

- Karras noise levels (EDM): sigma_i = (s_min^(1/rho) + i/(N-1) (s_max^(1/rho) - s_min^(1/rho)))^rho, i = 0..N-1,
  with sigma_min = 0.002, sigma_max = 80, rho = 7 ([17] section 3 / [8] appendix).
- Exponential discretisation curriculum: N(k) = min(s0 * 2^floor(k / K'), s1) + 1 with s0 = 10, s1 = 1280 and
  K' = floor(K / (log2(s1 / s0) + 1)) for K total iterations ([17] eq. 7).
- Noise level sampling: index i drawn with probability proportional to
  erf((log sigma_{i+1} - P_mean) / (sqrt 2 P_std)) - erf((log sigma_i - P_mean) / (sqrt 2 P_std)),
  P_mean = -1.1, P_std = 2.0 ([17] section 3.5, lognormal proposal).
- Weighting lambda(sigma_i) = 1 / (sigma_{i+1} - sigma_i) ([17] section 3.4).

In Algorithm 1 the two noisy targets X_target + eps_1 and X_target + eps_2 are the adjacent points of one
trajectory: eps_1 = sigma_{i+1} z and eps_2 = sigma_i z with the same z (the consistency pair of eq. 1); the
prediction from the less noisy point is the detached teacher, as in iCT (no EMA teacher).
"""

from __future__ import annotations

import math

import torch

SIGMA_MIN = 0.002  # [17] / [8]: EDM noise range
SIGMA_MAX = 80.0
RHO = 7.0  # [8]: Karras et al. discretisation exponent
S0, S1 = 10, 1280  # [17] eq. 7: initial and final discretisation steps
P_MEAN, P_STD = -1.1, 2.0  # [17] section 3.5: lognormal noise proposal


def discretisation_steps(k: int, total: int) -> int:
    """N(k) of iCT's exponential curriculum ([17] eq. 7)."""
    stage = max(1, math.floor(total / (math.log2(S1 / S0) + 1)))
    return min(S0 * 2 ** (k // stage), S1) + 1


def karras_sigmas(n: int) -> torch.Tensor:
    """The n noise levels sigma_0 < ... < sigma_{n-1} of Karras et al."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = SIGMA_MIN ** (1 / RHO), SIGMA_MAX ** (1 / RHO)
    return (lo + ramp * (hi - lo)) ** RHO


def sample_noise_levels(k: int, total: int, generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For iteration k, one draw per generator (one per example): (sigma_i, sigma_{i+1}, lambda(sigma_i)), each (B,)."""
    sigmas = karras_sigmas(discretisation_steps(k, total))
    log_s = sigmas.log()
    cdf = torch.erf((log_s - P_MEAN) / (math.sqrt(2) * P_STD))
    probs = (cdf[1:] - cdf[:-1]).clamp_min(0)
    idx = torch.stack([torch.multinomial(probs, 1, generator=g)[0] for g in generators])
    lo, hi = sigmas[idx], sigmas[idx + 1]
    return lo.float(), hi.float(), (1.0 / (hi - lo)).float()
