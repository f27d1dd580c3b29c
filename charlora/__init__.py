"""CharLoRA: train a Stable Diffusion 1.5 character LoRA from a handful of pictures."""

import logging

__version__ = "0.1.0"

# bitsandbytes warns at import, on every CPU with AVX512-BF16, that optional 4-bit CPU kernels are
# missing; CharLoRA never uses 4-bit layers, so the message only alarms users.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
