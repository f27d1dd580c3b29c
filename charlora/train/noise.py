"""Noise, timesteps, targets and the loss of one training step, as Kohya's sd-scripts computes them.

Sources in sd-scripts: `get_noise_noisy_latents_and_timesteps` (library/train_util.py),
`apply_noise_offset`, `pyramid_noise_like` and `apply_snr_weight` (library/custom_train_functions.py)
and the loss lines of `train_network.py`.

Kohya's GUI passes either the noise-offset options or the multires options to sd-scripts, chosen
by `noise_offset_type`; so does `make_noise`. Every random draw comes from the torch generator
given (never Python's `random`, which sd-scripts uses for the pyramid scales), so a seeded run
repeats exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import CharLoRAError


def _randn(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise of `shape`, drawn on the generator's device, returned on `like`'s."""
    device = generator.device if generator is not None else like.device
    noise = torch.randn(shape, generator=generator, device=device, dtype=like.dtype)
    return noise.to(like.device)


def _rand(generator: torch.Generator | None) -> float:
    device = generator.device if generator is not None else "cpu"
    return torch.rand((), generator=generator, device=device).item()


def sample_timesteps(batch_size, min_timestep, max_timestep, generator=None, device="cpu") -> torch.LongTensor:
    """One uniform timestep per sample in [min_timestep, max_timestep), like sd-scripts' torch.randint."""
    if not 0 <= min_timestep < max_timestep:
        raise CharLoRAError(
            f"min_timestep ({min_timestep}) must be at least 0 and below max_timestep ({max_timestep}); "
            "max_timestep is exclusive, so set e.g. min_timestep 0 and max_timestep 1000"
        )
    draw_device = generator.device if generator is not None else device
    timesteps = torch.randint(min_timestep, max_timestep, (batch_size,), generator=generator, device=draw_device)
    return timesteps.long().to(device)


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float, generator=None) -> torch.Tensor:
    """Multi-resolution ("pyramid") noise: sd-scripts' `pyramid_noise_like`, on a new tensor."""
    b, c, w, h = noise.shape  # names as in sd-scripts: w is dim 2, h is dim 3
    upsample = torch.nn.Upsample(size=(w, h), mode="bilinear")
    noise = noise.clone()
    for i in range(iterations):
        r = _rand(generator) * 2 + 2  # a random scale factor in [2, 4) rather than always 2x
        wn, hn = max(1, int(w / (r**i))), max(1, int(h / (r**i)))
        noise += upsample(_randn((b, c, wn, hn), noise, generator)) * discount**i
        if wn == 1 or hn == 1:
            break  # the coarsest level is 1 pixel wide
    return noise / noise.std()  # one std over the whole batch, as sd-scripts does


def make_noise(latents: torch.Tensor, values: dict, generator=None) -> torch.Tensor:
    """The noise added to `latents` in a training step: Gaussian, plus offset or multires noise."""
    noise = _randn(latents.shape, latents, generator)
    noise_type = values["noise_offset_type"]
    if noise_type == "Original":
        noise_offset = values["noise_offset"]
        if noise_offset > 0:
            offset = noise_offset
            adaptive = values["adaptive_noise_scale"]
            if adaptive != 0:
                # Brighter/darker latents (larger |channel mean|) get a larger offset; never below 0.
                latent_mean = latents.mean(dim=(2, 3), keepdim=True).abs()
                offset = torch.clamp(offset + adaptive * latent_mean, min=0.0)
            noise = noise + offset * _randn((latents.shape[0], latents.shape[1], 1, 1), latents, generator)
    elif noise_type == "Multires":
        iterations = values["multires_noise_iterations"]
        if iterations > 0:
            discount = values["multires_noise_discount"]
            noise = pyramid_noise(noise, iterations, discount, generator)
    else:
        raise CharLoRAError(f"noise_offset_type {noise_type!r} is not known; use 'Original' or 'Multires'")
    return noise


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio of each timestep: (sqrt(a_bar) / sqrt(1 - a_bar))^2."""
    alpha_bar = alphas_cumprod.to(timesteps.device)[timesteps]
    return (torch.sqrt(alpha_bar) / torch.sqrt(1.0 - alpha_bar)) ** 2


def min_snr_weights(timesteps, gamma, alphas_cumprod, v_prediction=False) -> torch.Tensor:
    """Min-SNR loss weights: min(snr, gamma)/snr, or min(snr, gamma)/(snr + 1) for v-prediction."""
    if not gamma:
        return torch.ones(timesteps.shape[0], device=timesteps.device)
    ratio = snr(alphas_cumprod, timesteps).float()
    clipped = torch.minimum(ratio, torch.full_like(ratio, float(gamma)))
    return clipped / (ratio + 1) if v_prediction else clipped / ratio


def training_target(scheduler, latents, noise, timesteps, v_prediction=False) -> torch.Tensor:
    """What the UNet learns to predict: the noise (epsilon) or the velocity (v-prediction)."""
    if v_prediction:
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def per_sample_loss(pred, target, loss_weights, timesteps, values, alphas_cumprod) -> torch.Tensor:
    """Kohya's loss per sample: MSE averaged over C, H, W, times the sample's weight (prior_loss_weight
    for regularisation images, 1 otherwise), times the min-SNR weight when min_snr_gamma > 0.
    The step's loss is the mean of this vector."""
    loss = F.mse_loss(pred.float(), target.float(), reduction="none")
    loss = loss.mean(dim=list(range(1, loss.ndim)))
    if loss_weights is not None:
        loss = loss * torch.as_tensor(loss_weights, dtype=loss.dtype, device=loss.device)
    gamma = values["min_snr_gamma"]
    if gamma > 0:
        weights = min_snr_weights(timesteps, gamma, alphas_cumprod, values["v_parameterization"])
        loss = loss * weights.to(loss.device)
    return loss
