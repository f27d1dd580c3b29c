"""`lora inspect`: what a LoRA file is, like Kohya's "Verify LoRA" and more."""

from __future__ import annotations

import json
import math
import re

import torch

from .kohya_file import LoRAFileError, classify, load_lora_weights, lora_family, read_header
from .targets import TE_PREFIXES, UNET_PREFIX

# SD 1.5's UNet blocks in diffusers' names, SDXL's in the original ones (as Kohya names each)
_BLOCK = re.compile(r"^lora_unet_(down_blocks_\d+|up_blocks_\d+|mid_block|input_blocks_\d+|middle_block_\d+|"
                    r"output_blocks_\d+)|^lora_te(1|2)?_text_model_encoder_layers_(\d+)_")


def block_of(name: str) -> str:
    match = _BLOCK.match(name)
    if not match:
        return "other"
    if match.group(1):
        return "unet " + re.sub(r"_(\d+)$", r".\1", match.group(1))
    encoder = f"text encoder {match.group(2)}" if match.group(2) else "text encoder"
    return f"{encoder} layer {int(match.group(3)):02d}"


def inspect_lora(path) -> dict:
    """A description of the file. Raises LoRAFileError with a verdict when it is not a loadable LoRA."""
    header = read_header(path)
    kind, explanation = classify(header)
    if kind != "lora":
        raise LoRAFileError(f"{header.path} is {explanation}")
    family = lora_family(header)
    _, weights = load_lora_weights(path, family)
    # NaN/inf weights load without complaint but render black images: a damaged file, named per tensor
    non_finite = [f"{name}.{part}" for name, (down, up, alpha) in sorted(weights.items())
                  for part, tensor in (("lora_down.weight", down), ("lora_up.weight", up),
                                       ("alpha", torch.tensor(alpha)))
                  if not bool(torch.isfinite(tensor).all())]
    ranks = sorted({down.shape[0] for down, _, _ in weights.values()})
    alphas = sorted({alpha for _, _, alpha in weights.values()})
    norms: dict[str, float] = {}
    for name, (down, up, alpha) in weights.items():
        delta = up.flatten(1) @ down.flatten(1) * (alpha / down.shape[0])
        block = block_of(name)
        norms[block] = norms.get(block, 0.0) + float(torch.linalg.matrix_norm(delta) ** 2)
    meta = header.metadata
    version = meta.get("ss_base_model_version") or (
        f"{'sdxl_base_v1-0' if family == 'sdxl' else 'sd_v1'} (from key names)" if weights else "unknown")
    if non_finite:
        verdict = (f"damaged: {len(non_finite)} tensor(s) hold NaN or infinite values (images made with it come "
                   "out black); use an earlier file of the run, or train again with a lower learning rate")
    else:
        verdict = f"{explanation}, loadable in AUTOMATIC1111, ComfyUI and diffusers"
    return {
        "file": str(header.path),
        "verdict": verdict,
        "problems": [f"{name} holds NaN or infinite values" for name in non_finite],
        "base_model_version": version,
        "network_module": meta.get("ss_network_module", "networks.lora"),
        "rank": ranks[0] if len(ranks) == 1 else ranks,
        "alpha": alphas[0] if len(alphas) == 1 else alphas,
        "scale": alphas[0] / ranks[0] if len(ranks) == len(alphas) == 1 else None,
        "modules": {"unet": sum(n.startswith(UNET_PREFIX) for n in weights),
                    "text_encoder": sum(n.startswith(TE_PREFIXES) for n in weights)},
        "precision": sorted(set(header.dtypes.values())),
        "alpha_written": all(f"{n}.alpha" in header.shapes for n in weights),
        "block_weight_norms": {b: math.sqrt(v) for b, v in sorted(norms.items())},
        "metadata": dict(sorted(meta.items())),
    }


def format_report(info: dict) -> str:
    lines = [f"{info['file']}", f"  verdict:        {info['verdict']}",
             f"  base model:     {info['base_model_version']}",
             f"  rank / alpha:   {info['rank']} / {info['alpha']}  (scale {info['scale']})",
             f"  modules:        {info['modules']['unet']} UNet, {info['modules']['text_encoder']} text encoder",
             f"  precision:      {', '.join(info['precision'])}"]
    for problem in info["problems"][:20]:
        lines.append(f"  problem:        {problem}")
    if len(info["problems"]) > 20:
        lines.append(f"  problem:        ... and {len(info['problems']) - 20} more")
    if not info["alpha_written"]:
        lines.append("  note:           some modules have no .alpha; A1111 then uses a scale of 1")
    lines.append("  weight norm per block (|delta W|, alpha/rank applied):")
    lines += [f"    {block:<24} {norm:.6g}" for block, norm in info["block_weight_norms"].items()]
    lines.append(f"  metadata ({len(info['metadata'])} fields):")
    for key, value in info["metadata"].items():
        shown = value if len(value) <= 100 else value[:97] + "..."
        lines.append(f"    {key} = {shown}")
    return "\n".join(lines) + "\n"


def _finite(value):
    """JSON has no NaN or Infinity: such numbers become null (the problems list names them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(info: dict) -> str:
    return json.dumps(_finite(info), indent=2, ensure_ascii=False, allow_nan=False)
