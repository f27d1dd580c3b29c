"""CharLoRA: train a Stable Diffusion 1.5 character LoRA from a handful of pictures."""

__version__ = "0.1.0"
