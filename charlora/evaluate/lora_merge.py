"""LoRAs merged into the base weights for generation, as AUTOMATIC1111 applies them, undone exactly.

peft's LoRA layers add `up(down(x)) * scale` beside every wrapped layer at every step. For a grid that is
pure overhead: at rank 128 it made an SD 1.5 denoising step at 512 px ~20% slower on the CPU
(docs/benchmarks.md). Merged (W + scale * up @ down, once per cell), a step costs what the base model's
does. A1111 does the same and keeps a copy of the weights it changed; so does this: subtracting the
merge again (peft's unmerge) would leave rounding in fp16 weights, and the "no LoRA" row must be the
base model bit for bit.
"""

from __future__ import annotations

import torch


class MergedLoRAs:
    """Merges a pipeline's active peft adapters into its weights and restores the originals."""

    def __init__(self, pipe):
        self.pipe = pipe
        # kept on the CPU: host memory, not VRAM
        self.originals: dict = {}  # peft layer -> {"weight"/"bias": original}
        self.merged: tuple | None = None  # what is merged now (any hashable description), None: nothing

    def layers(self) -> list:
        from peft.tuners.tuners_utils import BaseTunerLayer  # imported when a LoRA is first used

        from ..models import family_of

        found = []
        for model in [self.pipe.unet] + [getattr(self.pipe, name) for name in family_of(self.pipe).text_encoders]:
            found += [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        return found

    def merge(self, key: tuple, adapter_names: list[str]) -> None:
        """Merge `adapter_names` (already activated with their weights by `set_adapters`) into the weights."""
        if self.merged == key:
            return
        self.restore()
        for layer in self.layers():
            base = layer.get_base_layer()
            if layer not in self.originals:
                self.originals[layer] = {name: getattr(base, name).detach().to("cpu", copy=True)
                                         for name in ("weight", "bias") if getattr(base, name, None) is not None}
            layer.merge(adapter_names=[name for name in adapter_names if name in layer.lora_A])
        self.merged = key

    def restore(self) -> None:
        """The base weights, exactly as loaded; the adapters stay loaded, unmerged."""
        if self.merged is None:
            return
        with torch.no_grad():
            for layer, tensors in self.originals.items():
                if layer.merged:
                    base = layer.get_base_layer()
                    for name, original in tensors.items():
                        getattr(base, name).copy_(original)
                    layer.merged_adapters.clear()
        self.merged = None
