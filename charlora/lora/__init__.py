"""LoRA on Kohya's SD 1.5 and SDXL targets (with peft), Kohya's file format, and inspection."""

from .kohya_file import LoRAFileError, classify, file_rank, load_lora_weights, read_header, save_lora
from .metadata import RunInfo, build_metadata, dataset_info
from .network import LoRANetwork, LoRASettings
from .targets import kohya_name, kohya_names, text_encoder_targets, unet_targets

__all__ = [
    "LoRAFileError", "classify", "file_rank", "load_lora_weights", "read_header", "save_lora", "RunInfo",
    "build_metadata", "dataset_info", "LoRANetwork", "LoRASettings", "kohya_name", "kohya_names",
    "text_encoder_targets", "unet_targets",
]
