"""Block-wise learning rates, as sd-scripts' networks/lora.py: the weight lists and curves, the block of each
module (SD 1.5's diffusers names, SDXL's original ones), blocks of weight 0 without modules, one optimizer
group per block, and the file's ss_network_args."""

import json
import math
from pathlib import Path

import pytest
from safetensors import safe_open

from charlora.errors import ConfigError
from charlora.lora import kohya_names
from charlora.lora.targets import block_index
from charlora.params import load_config, normalize
from charlora.params.block_lr import block_lr_weights
from charlora.train import Step, train

from dataset_helpers import pattern, save
from run_helpers import sdxl_on_meta

REPO = Path(__file__).resolve().parents[1]


def values(**overrides):
    return normalize(dict(load_config(REPO / "presets" / "quick-tiny-demo.json").values, **overrides)).values


def test_weights_and_curves_are_sd_scripts():
    assert block_lr_weights(values()) is None
    # SD 1.5: 12 down + 1 mid + 12 up; a short list is filled with 1.0, an empty item is 0
    notes = []
    weights = block_lr_weights(values(down_lr_weight="0.5,,2", mid_lr_weight="0.25"), notes)
    assert len(weights) == 25 and weights[:3] == (0.5, 0.0, 2.0) and weights[3:12] == (1.0,) * 9
    assert weights[12] == 0.25 and weights[13:] == (1.0,) * 12
    assert notes == ["down_lr_weight has 3 value(s) for 12 blocks: the rest are 1.0"]
    # the curves, as sd-scripts' get_list writes them (i over the 12 blocks)
    cosine = [math.sin(math.pi * (i / 11) / 2) for i in reversed(range(12))]
    assert block_lr_weights(values(down_lr_weight="cosine"))[:12] == pytest.approx(cosine)
    assert block_lr_weights(values(up_lr_weight="linear+.5"))[13:] == pytest.approx([i / 11 + 0.5 for i in range(12)])
    # weights at or below the threshold become 0
    assert block_lr_weights(values(up_lr_weight="sine", block_lr_zero_threshold="0.5"))[13:16] == (0.0, 0.0, 0.0)
    # SDXL: 1 + 9 input + 3 middle + 9 output + 1
    sdxl = block_lr_weights(values(sdxl=True, bucket_reso_steps=32, mid_lr_weight="0,1,0"))
    assert len(sdxl) == 23 and sdxl[0] == sdxl[22] == 1.0 and sdxl[10:13] == (0.0, 1.0, 0.0)


def test_bad_weights_are_named():
    with pytest.raises(ConfigError) as err:
        values(down_lr_weight="cosinus", mid_lr_weight="a,b", up_lr_weight="cosine+x", block_lr_zero_threshold="lots")
    message = str(err.value)
    for key in ("down_lr_weight 'cosinus'", "mid_lr_weight 'a,b'", "up_lr_weight 'cosine+x'",
                "block_lr_zero_threshold 'lots'"):
        assert key in message, key


def test_block_of_each_module_sd15_and_sdxl():
    assert block_index("lora_unet_down_blocks_0_attentions_0_proj_in", False) == 1
    assert block_index("lora_unet_down_blocks_2_attentions_1_transformer_blocks_0_attn1_to_q", False) == 8
    assert block_index("lora_unet_mid_block_attentions_0_proj_out", False) == 12
    assert block_index("lora_unet_up_blocks_1_attentions_0_proj_in", False) == 16
    assert block_index("lora_unet_up_blocks_3_attentions_2_proj_in", False) == 24
    assert block_index("lora_unet_input_blocks_4_1_proj_in", True) == 5
    assert block_index("lora_unet_middle_block_1_proj_in", True) == 11
    assert block_index("lora_unet_output_blocks_5_1_proj_out", True) == 18
    assert block_index("lora_te1_text_model_encoder_layers_0_mlp_fc1", True) == -1


def test_sdxl_base_modules_per_block_are_sd_scripts_count():
    """sd-scripts' enumeration of SDXL base: blocks 5, 6: 22 modules; 8, 9, 11, 13-15: 102; 16-18: 22."""
    unet = sdxl_on_meta()[0]
    counts = {}
    for name in kohya_names(unet, None):
        counts[block_index(name, True)] = counts.get(block_index(name, True), 0) + 1
    assert counts == {5: 22, 6: 22, 8: 102, 9: 102, 11: 102, 13: 102, 14: 102, 15: 102, 16: 22, 17: 22, 18: 22}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("block-lr-data")
    for i in range(2):
        save(root / "img" / "2_wwaa girl" / f"{i}.png", pattern(64, 64, i), "wwaa girl")
    return root


def test_a_run_with_block_lrs(tiny_model, data, tmp_path):
    """The tiny model's transformers sit in down block 0 (slots 1, 2: sd-scripts' down weights follow the
    original input_blocks, slot 0 being conv_in), the mid block (12) and up block 1 (16-18): weights of 0 for
    slots 0-2 drop down block 0's modules, the up weight 0.5 halves the lr of the rest."""
    events = []
    run = values(pretrained_model_name_or_path=str(tiny_model.single_file), train_data_dir=str(data / "img"),
                 output_dir=str(tmp_path), seed=1, epoch=1, down_lr_weight="0,0,0", up_lr_weight="zeros+0.5",
                 unet_lr=1e-3, text_encoder_lr=5e-4)
    result = train(run, [events.append])
    assert result.status == "completed", result.message
    lrs = [e.lr for e in events if isinstance(e, Step)][-1]  # one group per block with modules
    assert set(lrs) == {"unet_block12", "unet_block16", "unet_block17", "unet_block18", "text_encoder"}
    for block in ("unet_block16", "unet_block17", "unet_block18"):  # the schedule scales all alike
        assert lrs[block] == pytest.approx(0.5 * lrs["unet_block12"], rel=1e-9)
    assert lrs["text_encoder"] == pytest.approx(0.5 * lrs["unet_block12"], rel=1e-9)  # 5e-4 vs 1e-3
    with safe_open(str(tmp_path / "tiny-demo.safetensors"), "pt") as fh:
        keys = list(fh.keys())
        meta = fh.metadata()
    assert not any(k.startswith("lora_unet_down_blocks_") for k in keys)
    assert any(k.startswith("lora_unet_up_blocks_1_") for k in keys) and any("mid_block" in k for k in keys)
    assert json.loads(meta["ss_network_args"]) == {"down_lr_weight": "0,0,0", "up_lr_weight": "zeros+0.5"}


def test_the_training_tab_sums_block_lrs_up():
    from charlora.ui.training_tab import lr_summary

    assert lr_summary({"unet": 1e-4, "text_encoder": 5e-5}) == "unet 0.0001, text_encoder 5e-05"
    assert lr_summary({"unet_block12": 1e-3, "unet_block16": 5e-4, "text_encoder": 5e-4}) == \
        "unet 0.0005-0.001 (2 blocks), text_encoder 0.0005"


def test_a_lone_number_and_prodigy_are_refused():
    with pytest.raises(ConfigError, match=r"down_lr_weight '0.5': give one number per block \(12"):
        values(down_lr_weight="0.5")
    with pytest.raises(ConfigError, match="Prodigy needs one learning rate"):
        values(up_lr_weight="cosine", optimizer="Prodigy")
