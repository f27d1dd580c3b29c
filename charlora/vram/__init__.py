"""The parts of the VRAM estimate (`charlora/vram_estimate.py` puts them together)."""
