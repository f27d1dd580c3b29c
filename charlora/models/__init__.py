"""Base models: the tiny offline test model, SD checkpoint layouts, and loading."""

from pathlib import Path

# SD 1.5's component configs and tokenizer, carried so single files load with no network (and the VRAM
# estimate reads the architecture from them); here so that reading them imports no torch
SD15_CONFIG_DIR = Path(__file__).parent / "sd15"
