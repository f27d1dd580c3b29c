"""Base models: the tiny offline test model, SD checkpoint layouts, and loading."""

from dataclasses import dataclass
from pathlib import Path

# SD 1.5's component configs and tokenizer, carried so single files load with no network (and the VRAM
# estimate reads the architecture from them); here so that reading them imports no torch
SD15_CONFIG_DIR = Path(__file__).parent / "sd15"
# SDXL base 1.0's component configs (its tokenizers are SD 1.5's files, see sdxl/SOURCES.md)
SDXL_CONFIG_DIR = Path(__file__).parent / "sdxl"


@dataclass(frozen=True)
class Family:
    """A base-model family CharLoRA trains for: what `checkpoint_file` calls it, what users call it, its
    diffusers pipeline, its carried configs and its text encoders (the pipeline's attribute names)."""

    arch: str
    name: str
    pipeline: str
    config_dir: Path
    text_encoders: tuple


SD15 = Family("sd1", "SD 1.5", "StableDiffusionPipeline", SD15_CONFIG_DIR, ("text_encoder",))
SDXL = Family("sdxl", "SDXL", "StableDiffusionXLPipeline", SDXL_CONFIG_DIR, ("text_encoder", "text_encoder_2"))
FAMILIES = {family.arch: family for family in (SD15, SDXL)}


def family_of(pipe) -> Family:
    """The family of a loaded pipeline (SDXL's has a second text encoder)."""
    return SDXL if getattr(pipe, "text_encoder_2", None) is not None else SD15
