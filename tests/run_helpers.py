"""Small helpers the training and model tests share: an event recorder, and a weight comparison."""

import torch


class Recorder:
    """A training listener that keeps every event, for the test to look at afterwards."""

    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


def assert_same_weights(a, b, parts):
    """Every tensor of each named model of two pipelines is equal, bit for bit."""
    for part in parts:
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys(), part
        different = [k for k in sa if not torch.equal(sa[k], sb[k])]
        assert not different, f"{part}: {different[:3]}"


def sdxl_on_meta():
    """SDXL base 1.0's UNet, VAE and two text encoders, built from the carried configs on the meta device (no
    memory used, no weights): for checks of names, shapes and counts at full size."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from charlora.models import SDXL_CONFIG_DIR

    with torch.device("meta"):
        return (UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SDXL_CONFIG_DIR / "unet")),
                AutoencoderKL.from_config(AutoencoderKL.load_config(SDXL_CONFIG_DIR / "vae")),
                CLIPTextModel(CLIPTextConfig.from_pretrained(SDXL_CONFIG_DIR / "text_encoder")),
                CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(SDXL_CONFIG_DIR / "text_encoder_2")))
