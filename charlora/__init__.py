"""CharLoRA: train a Stable Diffusion 1.5 or SDXL character LoRA from a handful of pictures."""

import logging

__version__ = "0.1.0"


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(fragment in record.getMessage() for fragment in self.fragments)


# Messages from libraries that only alarm users: bitsandbytes warns at import that optional 4-bit CPU
# kernels are missing (CharLoRA never uses 4-bit layers); transformers warns that torchvision is absent
# (only its image processors want it, and they fall back to PIL; nothing here uses them).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
logging.getLogger("transformers.utils.import_utils").addFilter(_DropMessages("requires torchvision (not installed)"))
# diffusers' load_lora_weights makes transformers print a "LOAD REPORT" listing every LoRA weight of the
# text encoder as MISSING: it is written while the adapter is injected, before its weights are set
# (the loaded text encoder matches the trained one; tests/test_lora.py checks it).
logging.getLogger("transformers.integrations.peft").addFilter(_DropMessages("LOAD REPORT"))
# The CLI and the GUI show the engine's messages themselves (events); no second copy on stderr.
logging.getLogger("charlora").addHandler(logging.NullHandler())
