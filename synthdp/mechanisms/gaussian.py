"""The Gaussian mechanism on real-valued sums, with noise from the run's noise stream.

`gaussian_noise` draws N(0, std^2) per coordinate; `noisy_average` releases (sum + noise) / B, the
step DP-SGD takes once per logical batch (`synthdp.mechanisms.dpsgd`). A sum whose L2 sensitivity is
C released with noise of standard deviation sigma * C is the Gaussian mechanism with noise multiplier
sigma, accounted by dp_accounting as `GaussianDpEvent(sigma)` (Poisson-subsampled and self-composed
for DP-SGD: `DpSgdSteps` of `synthdp.privacy.costs`). Integer counts use the exact discrete Gaussian
instead (`synthdp.mechanisms.discrete_gaussian`).

Randomness. The noise comes from the run's noise stream (a numpy Generator over ChaCha20,
`synthdp.mechanisms.randomness.noise_generator`), never from torch's Mersenne Twister. As in opacus'
secure mode, each coordinate is the sum of 4 independent N(0, std^2) draws divided by 2 (Holohan and
Braghin 2021, "Secure random sampling in differential privacy", Sec. 5.1): their defence against attacks
that recover floating-point Gaussian noise from its low-order bits (the Gaussian analogue of Mironov
2012's attack on floating-point Laplace noise). It is not a proof. The noise is drawn and added in
float64 on the CPU, so a run draws the same noise on any device.
"""

from __future__ import annotations

import numpy as np
import torch


def check_noise_rng(rng: object) -> None:
    """Noise and private sampling take the run's noise stream, a numpy Generator, explicitly."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError("`rng` must be a numpy Generator (the run's noise stream); noise never uses torch's generator.")


def gaussian_noise(shape: tuple[int, ...], std: float, rng: np.random.Generator) -> np.ndarray:
    """N(0, std^2) per entry in float64 from the noise stream: (Z1 + Z2 + Z3 + Z4) / 2 * std with Zi standard
    normals (the sum of 4 Gaussians of opacus' secure mode)."""
    check_noise_rng(rng)
    z = rng.standard_normal((4, *shape))
    return (z[0] + z[1] + z[2] + z[3]) * (0.5 * std)


def noisy_average(total: dict[str, torch.Tensor], noise_std: float, expected_batch: float,
                  rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """(sum + N(0, noise_std^2 I)) / B per tensor, float32, on the tensor's device. B is a public count (DP-SGD:
    the expected batch size, never the realised one). Sum and noise are added in float64 on the CPU."""
    out = {}
    for k, t in total.items():
        noise = torch.from_numpy(gaussian_noise(tuple(t.shape), noise_std, rng))
        out[k] = ((t.detach().cpu().double() + noise) / expected_batch).float().to(t.device)
    return out
