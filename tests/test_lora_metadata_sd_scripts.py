"""The LoRA file's metadata key for key as sd-scripts 48d368fa's train_network.py writes it (issue 15).

EXPECTED is derived from sd-scripts' source at commit 48d368fa (public: kohya-ss/sd-scripts), for a bare
`train_network.py` command line carrying the user's Kohya GUI config the way the GUI passes it (a setting
that is off is not passed, so sd-scripts writes its default; clip_skip as set; warm-up as percent / 100).
Line numbers: `tn` train_network.py, `tu` library/train_util.py, `ms` library/sai_model_spec.py.
Every value is str() of what sd-scripts holds (tn 1223). docs/dev/sd-scripts-metadata.md has the detail.

A real training run (the seed config on the tiny model, with a regularisation folder) writes the file
that is compared: the same keys (plus CharLoRA's own `charlora.*`), the same value types, and the same
values where the setting is the same.
"""

from __future__ import annotations

import json
import re
import sys

import pytest
from safetensors import safe_open

from charlora.lora.metadata import sd_model_name, source_model_hashes
from charlora.params import normalize
from charlora.train import train
from conftest import SEED_CONFIG
from dataset_helpers import pattern, save

INT, FLOAT, DATE = re.compile(r"-?\d+"), re.compile(r"-?\d+\.\d+(e-?\d+)?"), re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
HEX8, HEX64 = re.compile(r"[0-9a-f]{8}"), re.compile(r"[0-9a-f]{64}")
IMPLEMENTATION = re.compile(r"charlora/\S+")  # sd-scripts writes "sd-scripts/<git commit>" (tu 3302-3306, ms 272-293)

# The run below: the seed config with these changes (small pictures and rank, 2 epochs, a fixed seed).
CHANGES = {"max_resolution": "64,64", "min_bucket_reso": 64, "max_bucket_reso": 128, "network_dim": 4, "epoch": 2,
           "seed": "7", "caption_extension": ".txt", "logging_dir": ""}  # the seed's log folder is a Windows path

# key: (source line, what sd-scripts writes for this run: a string, or a pattern for values that vary per run)
EXPECTED = {
    "ss_session_id": ("tn 492, 1004", INT),
    "ss_training_started_at": ("tn 493, 1005", FLOAT),
    "ss_output_name": ("tn 1006", "wwaa-g13l-1"),
    "ss_learning_rate": ("tn 1007", "0.0001"),
    "ss_text_encoder_lr": ("tn 733-741, 1008", "5e-05"),
    "ss_unet_lr": ("tn 1009", "0.0001"),
    "ss_num_train_images": ("tn 1010; tu 2139-2140", "8"),  # 4 images x 2 repeats
    "ss_num_validation_images": ("tn 1011", "0"),
    "ss_num_reg_images": ("tn 1012; tu 2137-2138", "1"),  # the reg folder as found: 1 image x 1 repeat
    "ss_num_batches_per_epoch": ("tn 1013", "16"),  # 8 train + 8 balanced reg samples, batch 1
    "ss_num_epochs": ("tn 979, 1014", "2"),
    "ss_gradient_checkpointing": ("tn 1015", "False"),
    "ss_gradient_accumulation_steps": ("tn 1016", "1"),
    "ss_max_train_steps": ("tn 800, 1017", "32"),
    "ss_lr_warmup_steps": ("tn 1018; tu 3747-3749 int_or_float", "0.1"),  # lr_warmup 10 (%) as the GUI passes it
    "ss_lr_scheduler": ("tn 1019", "cosine"),
    "ss_network_module": ("tn 1020", "networks.lora"),
    "ss_network_dim": ("tn 1021", "4"),
    "ss_network_alpha": ("tn 1022, 1791-1794 type=float", "1.0"),
    "ss_network_dropout": ("tn 1023, 1797 default None", "None"),
    "ss_mixed_precision": ("tn 1024", "fp16"),
    "ss_full_fp16": ("tn 1025", "False"),
    "ss_v2": ("tn 1026", "False"),
    "ss_base_model_version": ("tn 187, 1027", "sd_v1"),
    "ss_clip_skip": ("tn 1028", "1"),
    "ss_max_token_length": ("tn 1029; tu 3902-3905 choices None/150/225", "None"),
    "ss_cache_latents": ("tn 1030", "True"),
    "ss_seed": ("tn 1031", "7"),
    "ss_lowram": ("tn 1032", "False"),
    "ss_noise_offset": ("tn 1033; tu 4068 default None", "None"),
    "ss_multires_noise_iterations": ("tn 1034; tu 4079 default None", "None"),
    "ss_multires_noise_discount": ("tn 1035; tu 4104-4106 default 0.3", "0.3"),
    "ss_adaptive_noise_scale": ("tn 1036; tu 4110 default None", "None"),
    "ss_zero_terminal_snr": ("tn 1037", "False"),
    "ss_training_comment": ("tn 1038, 1818 default None", "None"),
    "ss_sd_scripts_commit_hash": ("tn 1039; tu 3302-3306", IMPLEMENTATION),
    "ss_optimizer": ("tn 1040; tu 5218-5225", "bitsandbytes.optim.adamw.AdamW8bit"),
    "ss_max_grad_norm": ("tn 1041", "1.0"),
    "ss_caption_dropout_rate": ("tn 1042", "0.0"),
    "ss_caption_dropout_every_n_epochs": ("tn 1043", "0"),
    "ss_caption_tag_dropout_rate": ("tn 1044", "0.0"),
    "ss_face_crop_aug_range": ("tn 1045", "None"),
    "ss_prior_loss_weight": ("tn 1046", "1.0"),
    "ss_min_snr_gamma": ("tn 1047; ctf 117-119 default None", "None"),
    "ss_scale_weight_norms": ("tn 1048, 1829 default None", "None"),
    "ss_ip_noise_gamma": ("tn 1049", "None"),
    "ss_debiased_estimation": ("tn 1050", "False"),
    "ss_noise_offset_random_strength": ("tn 1051", "False"),
    "ss_ip_noise_gamma_random_strength": ("tn 1052", "False"),
    "ss_loss_type": ("tn 1053", "l2"),
    "ss_huber_schedule": ("tn 1054", "snr"),
    "ss_huber_scale": ("tn 1055", "1.0"),
    "ss_huber_c": ("tn 1056", "0.1"),
    "ss_fp8_base": ("tn 1057", "False"),
    "ss_fp8_base_unet": ("tn 1058", "False"),
    "ss_validation_seed": ("tn 1059", "None"),
    "ss_validation_split": ("tn 1060", "0.0"),
    "ss_max_validation_steps": ("tn 1061", "None"),
    "ss_validate_every_n_epochs": ("tn 1062", "None"),
    "ss_validate_every_n_steps": ("tn 1063", "None"),
    "ss_resize_interpolation": ("tn 1064", "None"),
    # folder (DreamBooth) dataset keys, tn 1181-1198
    "ss_batch_size_per_device": ("tn 1183", "1"),
    "ss_total_batch_size": ("tn 985, 1184", "1"),
    "ss_resolution": ("tn 1185; tu 5409-5412", "(64, 64)"),
    "ss_color_aug": ("tn 1186", "False"),
    "ss_flip_aug": ("tn 1187", "False"),
    "ss_random_crop": ("tn 1188", "False"),
    "ss_shuffle_caption": ("tn 1189", "False"),
    "ss_enable_bucket": ("tn 1190", "True"),
    "ss_bucket_no_upscale": ("tn 1191", "True"),
    "ss_min_bucket_reso": ("tn 1192", "64"),
    "ss_max_bucket_reso": ("tn 1193", "128"),
    "ss_keep_tokens": ("tn 1194", "0"),
    "ss_dataset_dirs": ("tn 1168-1171, 1195", {"2_wwaa girl": {"n_repeats": 2, "img_count": 4}}),
    "ss_reg_dataset_dirs": ("tn 1196", {"1_girl": {"n_repeats": 1, "img_count": 1}}),
    "ss_tag_frequency": ("tn 1197; tu 800-809, 2077-2083", {"2_wwaa girl": {"wwaa girl": 4, "smiling": 4},
                                                            "1_girl": {"girl": 1}}),
    "ss_bucket_info": ("tn 1198; tu 1058-1073", {"buckets": {"0": {"resolution": [64, 64], "count": 16}},
                                                 "mean_img_ar_error": 0.0}),
    # the base model, tn 1206-1213 (a local single file: its name and both hashes)
    "ss_sd_model_name": ("tn 1212-1213", "tiny-sd15.safetensors"),
    "ss_sd_model_hash": ("tn 1210; tu 3223-3237", HEX8),
    "ss_new_sd_model_hash": ("tn 1211; tu 3240-3256", HEX64),
    # per save, tn 1296-1309 (the final file)
    "ss_training_finished_at": ("tn 1301", FLOAT),
    "ss_steps": ("tn 1302", "32"),
    "ss_epoch": ("tn 1303, 1727", "2"),
    "sshs_model_hash": ("lora.py 1274-1276; tu 3285-3299", HEX64),
    "sshs_legacy_hash": ("lora.py 1274-1276", HEX8),
    # modelspec, tn 341-342 -> tu 3495-3570 -> ms 378-498 (fields that are not None)
    "modelspec.sai_model_spec": ("ms 40, 115", "1.0.1"),
    "modelspec.architecture": ("ms 70, 193-243", "stable-diffusion-v1/lora"),
    "modelspec.implementation": ("ms 92, 246-269", "diffusers"),
    "modelspec.implementation_version": ("ms 272-293, 476-478", IMPLEMENTATION),
    "modelspec.title": ("ms 415-422; tu 3513", "wwaa-g13l-1"),
    "modelspec.resolution": ("ms 316-346", "64x64"),
    "modelspec.date": ("ms 424-427 (at each save)", DATE),
    "modelspec.prediction_type": ("ms 432-439", "epsilon"),
    "modelspec.encoder_layer": ("ms 450-453 (clip_skip not None, 1 included)", "1"),
}
JSON_KEYS = ("ss_dataset_dirs", "ss_reg_dataset_dirs", "ss_tag_frequency", "ss_bucket_info")


def metadata(path):
    with safe_open(str(path), "pt") as fh:
        return fh.metadata()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("meta-data")
    for i in range(4):
        save(root / "img" / "2_wwaa girl" / f"{i}.png", pattern(64, 64, i), "wwaa girl, smiling")
    save(root / "reg" / "1_girl" / "r.png", pattern(64, 64, 50), "girl")
    return root


def seed_run(tiny_model, data, out, base=None, **changes):
    raw = json.loads(SEED_CONFIG.read_text())
    raw.update(CHANGES, pretrained_model_name_or_path=str(base or tiny_model.single_file),
               train_data_dir=str(data / "img"), reg_data_dir=str(data / "reg"), output_dir=str(out), **changes)
    result = train(normalize(raw).values)
    assert result.status == "completed", result.message
    return out / "wwaa-g13l-1.safetensors"


@pytest.fixture(scope="module")
def runs(tiny_model, data, tmp_path_factory):
    """Two runs of the same config and seed (item 3 needs two)."""
    root = tmp_path_factory.mktemp("meta-runs")
    return [seed_run(tiny_model, data, root / name) for name in ("first", "second")]


def test_the_file_has_the_keys_types_and_values_sd_scripts_writes(runs):
    meta = metadata(runs[0])
    ours = {k for k in meta if not k.startswith("charlora.")}
    assert sorted(ours - set(EXPECTED)) == [], "keys sd-scripts does not write"
    assert sorted(set(EXPECTED) - ours) == [], "keys sd-scripts writes that the file lacks"
    assert set(meta) - ours == {"charlora.version", "charlora.config"}
    wrong = {}
    for key, (line, expected) in EXPECTED.items():
        value = meta[key]
        if key in JSON_KEYS:
            ok = json.loads(value) == expected
        elif isinstance(expected, re.Pattern):
            ok = expected.fullmatch(value) is not None
        else:
            ok = value == expected
        if not ok:
            wrong[key] = (line, value, expected)
    assert wrong == {}


def test_two_runs_with_the_same_seed_have_different_session_ids(runs):
    first, second = (metadata(path) for path in runs)
    assert first["ss_seed"] == second["ss_seed"] == "7"
    assert first["sshs_model_hash"] == second["sshs_model_hash"]  # the same training, bit for bit
    assert first["ss_session_id"] != second["ss_session_id"]  # but two runs: sd-scripts draws it unseeded (tn 492)
    # every file of one run shares its run's id
    epoch_file = runs[0].with_name("wwaa-g13l-1-000001.safetensors")
    assert metadata(epoch_file)["ss_session_id"] == first["ss_session_id"]


def test_ss_optimizer_names_the_optimizer_that_ran(tiny_model, data, tmp_path, monkeypatch):
    """With bitsandbytes missing and optimizer_fallback on, AdamW ran: the file says so, not AdamW8bit."""
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError
    path = seed_run(tiny_model, data, tmp_path / "model", optimizer_fallback=True, epoch=1)
    meta = metadata(path)
    assert meta["ss_optimizer"] == "torch.optim.adamw.AdamW"
    assert json.loads(meta["charlora.config"])["optimizer"] == "AdamW8bit"  # what the config asked for


def test_a_diffusers_folder_base_model_is_named_and_hashed_as_sd_scripts_does(tiny_model, data, tmp_path):
    """sd-scripts hashes the path it was given: a folder makes both hashes "IsADirectory" (tu 3223-3256)."""
    meta = metadata(seed_run(tiny_model, data, tmp_path / "model", base=tiny_model.folder, epoch=1))
    assert meta["ss_sd_model_hash"] == meta["ss_new_sd_model_hash"] == "IsADirectory"
    assert meta["ss_sd_model_name"] == tiny_model.folder.name


def test_base_model_names_and_hashes_by_kind(tiny_model, tmp_path):
    assert sd_model_name(str(tiny_model.single_file)) == tiny_model.single_file.name
    assert sd_model_name(str(tiny_model.folder)) == tiny_model.folder.name
    # a Hub id (not on disk): the whole id, and no hash keys at all (tn 1207-1213)
    assert sd_model_name("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"
    assert source_model_hashes("runwayml/stable-diffusion-v1-5") == (None, None)
    legacy, full = source_model_hashes(tiny_model.single_file)
    assert HEX8.fullmatch(legacy) and HEX64.fullmatch(full)
