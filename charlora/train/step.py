"""One training step's loss, as Kohya's train_network computes it.

Latents (cached, or encoded now) x the VAE's scaling factor; noise (with offset / multires noise);
timesteps uniform in [min_timestep, max_timestep); noisy latents from the DDPM schedule; text conditioning
(clip_skip, 75-token chunks; SDXL: both text encoders, and the pooled text and the six size numbers for the
UNet's added embedding); UNet prediction; MSE against the noise (or the velocity with v_parameterization)
per sample, x prior_loss_weight for reg samples, x min-SNR weights. With several
processes every one draws the same noise for the whole global batch and takes its own slice.
"""

from __future__ import annotations

import torch

from . import noise as noise_fn
from .context import RunContext
from .text import encode_captions


def text_conditioning(ctx: RunContext, captions: list, text_cache: dict | None):
    """(hidden states, pooled output or None) for the captions: from the cache when there is one."""
    if text_cache is not None:
        entries = [text_cache[c] for c in captions]
        pooled = torch.cat([e[1] for e in entries]) if entries[0][1] is not None else None
        return torch.cat([e[0] for e in entries]), pooled
    return encode_captions(ctx.pipe, captions, ctx.values, ctx.device)


def step_loss(ctx: RunContext, batch: dict, text_cache: dict | None, train_te: bool) -> torch.Tensor:
    """This process's share of the loss of one global batch (`train_te`: the text encoder learns this step)."""
    v = ctx.values
    vae = ctx.pipe.vae
    if "latents" in batch:
        latents = batch["latents"].float()
    else:
        with torch.no_grad():
            pixels = batch["pixels"].to(ctx.device, torch.float32)
            dist = vae.encode(pixels).latent_dist
            sample = torch.randn(dist.mean.shape, generator=ctx.noise_generator)
            latents = (dist.mean + dist.std * sample.to(dist.mean.device)).float().cpu()
    latents = latents * vae.config.scaling_factor
    # noise and timesteps for the whole global batch (the same on every process), then our slice
    noise = noise_fn.make_noise(latents, v, ctx.noise_generator)
    timesteps = noise_fn.sample_timesteps(latents.shape[0], v["min_timestep"], v["max_timestep"],
                                          ctx.noise_generator)
    weights = batch["loss_weights"].float()
    captions = list(batch["captions"])
    real_samples = latents.shape[0]
    size = v["train_batch_size"]
    lo = ctx.place.rank * size
    if lo >= latents.shape[0]:  # last, partial global batch: this process repeats a sample at weight 0
        lo, weights = latents.shape[0] - 1, torch.zeros_like(weights)
    hi = min(lo + size, latents.shape[0])
    latents, noise, timesteps = latents[lo:hi].to(ctx.device), noise[lo:hi].to(ctx.device), \
        timesteps[lo:hi].to(ctx.device)
    weights, captions = weights[lo:hi].to(ctx.device), captions[lo:hi]

    autocast = torch.autocast(ctx.device.type, dtype=ctx.precision.autocast_dtype,
                              enabled=ctx.precision.autocast_dtype is not None)
    with autocast:
        with torch.set_grad_enabled(train_te):
            hidden, pooled = text_conditioning(ctx, captions, text_cache)
        noisy = ctx.noise_scheduler.add_noise(latents, noise, timesteps)
        weight_dtype = ctx.precision.weight_dtype
        extra = {}
        if pooled is not None:  # SDXL: the pooled text and the six size numbers, embedded by the UNet
            extra["added_cond_kwargs"] = {"text_embeds": pooled.to(weight_dtype),
                                          # fp32: in fp16/bf16 sizes such as 1365 would round before being
                                          # embedded; sd-scripts embeds the exact integers
                                          "time_ids": batch["time_ids"][lo:hi].to(ctx.device, torch.float32)}
        prediction = ctx.pipe.unet(noisy.to(weight_dtype), timesteps, hidden.to(weight_dtype), **extra).sample
    target = noise_fn.training_target(ctx.noise_scheduler, latents, noise, timesteps, v["v_parameterization"])
    per_sample = noise_fn.per_sample_loss(prediction.float(), target.float(), weights, timesteps, v,
                                          ctx.noise_scheduler.alphas_cumprod.to(ctx.device))
    # this process's share of the mean over the whole global batch: averaged over the processes it is
    # exactly the one-process loss, also when the last batch of a bucket is partial
    return per_sample.sum() * ctx.place.world / real_samples
