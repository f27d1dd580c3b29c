"""Does a single file fit its family's configs? Asked before anything is read or built.

diffusers' own converters (the ones `from_single_file` runs) are applied to meta tensors of the file's
shapes, and the result is compared with meta models built from the configs: a missing or misshaped tensor
is an error that names it and the model it belongs to. diffusers alone would leave such a weight random or
as a meta tensor (e.g. a missing final_layer_norm.bias "loads"). Tensors no model uses (EMA copies, the
scheduler's buffers) are left alone, as diffusers does.
"""

import torch

from charlora.errors import ModelLoadError
from charlora.models import SD15, Family
from charlora.models.checkpoint_file import PICK_SD15, PICK_SDXL, SDXL_TE2_PREFIX


def check_fits(path, shapes, folder, family: Family):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint, convert_open_clip_checkpoint)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    meta = {key: torch.empty(shape, dtype=torch.float16, device="meta") for key, (shape, _) in shapes.items()}
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        text_encoder_2 = (CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
                          if "text_encoder_2" in family.text_encoders else None)

    def flat(model, converted):
        if not hasattr(model, "text_model"):  # transformers >= 5.6 dropped CLIPTextModel's `text_model.` level
            converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
        return converted

    parts = [("UNet", unet, lambda c: convert_ldm_unet_checkpoint(c, unet.config)),
             ("VAE", vae, lambda c: convert_ldm_vae_checkpoint(c, vae.config))]
    if text_encoder_2 is None:
        parts.append(("text encoder", text_encoder, lambda c: flat(text_encoder, convert_ldm_clip_checkpoint(c))))
    else:
        parts += [("text encoder 1", text_encoder, lambda c: flat(text_encoder, convert_ldm_clip_checkpoint(c))),
                  ("text encoder 2", text_encoder_2,
                   lambda c: convert_open_clip_checkpoint(text_encoder_2, c, prefix=SDXL_TE2_PREFIX))]
    for what, model, convert in parts:
        try:
            converted = convert(meta)
        except (KeyError, IndexError, ValueError, RuntimeError) as error:  # a tensor the converter needs is absent
            raise _misfit(path, what, family, [f"missing, e.g. {error}"]) from error
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("position_ids")}
        missing = [k for k in expected if k not in converted]
        wrong = [f"{k}: {list(converted[k].shape)} in the file, {list(shape)} expected"
                 for k, shape in expected.items() if k in converted and tuple(converted[k].shape) != shape]
        if missing or wrong:
            raise _misfit(path, what, family, [f"{len(found)} {label}, e.g. {found[0]}" for label, found in
                                               (("missing", missing), ("with the wrong shape", wrong)) if found])


def _misfit(path, what, family, problems):
    pick = PICK_SD15 if family is SD15 else PICK_SDXL
    return ModelLoadError(f"{path}: the {what} weights do not fit an {family.name} {what} ({'; '.join(problems)}). "
                          f"The file may be a different architecture or damaged. {pick}")
