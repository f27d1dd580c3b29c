"""Loading and saving Kohya GUI configs: the user's real file, round trips, hostile files."""

import json
from pathlib import Path

import pytest

from charlora.errors import ConfigError
from charlora.params import PARAMS, defaults, dump_kohya, load_config, normalize, save_config

from conftest import SEED_CONFIG  # noqa: E402

SEED = SEED_CONFIG


def write(tmp_path, content, name="config.json"):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def test_seed_config_normalises_to_the_users_settings():
    loaded = load_config(SEED)
    v = loaded.values
    assert loaded.warnings == []
    assert v["network_dim"] == 128 and isinstance(v["network_dim"], int)
    assert v["network_alpha"] == 1.0
    assert v["learning_rate"] == 1e-4 and v["unet_lr"] == 1e-4 and v["text_encoder_lr"] == 5e-5
    assert v["lr_scheduler"] == "cosine"
    assert v["lr_warmup"] == 10 and isinstance(v["lr_warmup"], int)  # "10" in the file
    assert v["epoch"] == 12 and v["train_batch_size"] == 1
    assert v["optimizer"] == "AdamW8bit" and v["mixed_precision"] == "fp16"
    assert v["clip_skip"] == 1 and v["keep_tokens"] == 0 and v["gradient_accumulation_steps"] == 1
    assert v["max_resolution"] == "512,512"
    assert v["seed"] is None and v["max_train_steps"] is None  # "" = not set
    assert v["pretrained_model_name_or_path"] == "C:\\AI\\models\\Stable-diffusion\\v1-5-pruned-emaonly.safetensors"
    assert v["xformers"] == "xformers" and v["cache_latents"] is True
    assert set(v) == {p.key for p in PARAMS}


def test_load_save_load_round_trip(tmp_path):
    first = load_config(SEED).values
    out = save_config(first, tmp_path / "saved.json")
    again = load_config(out).values
    assert again == first


def test_saved_file_is_flat_sorted_and_in_kohya_shapes(tmp_path):
    out = save_config(load_config(SEED).values, tmp_path / "saved.json")
    data = json.loads(out.read_text())
    assert list(data) == sorted(data)
    assert all(not isinstance(v, (dict, list)) for v in data.values())
    seed = json.loads(SEED.read_text())
    # every key of the seed is written back in the same JSON type Kohya used
    for key, original in seed.items():
        if key in ("wandb_api_key",):
            continue
        written = data[key]
        if isinstance(original, bool):
            assert isinstance(written, bool), key
        elif isinstance(original, str):
            assert isinstance(written, str), key
        else:
            assert isinstance(written, (int, float)) and not isinstance(written, bool), key
    assert data["clip_skip"] == "1" and data["seed"] == "" and data["max_resolution"] == "512,512"


def test_secrets_are_never_written(tmp_path):
    raw = json.loads(SEED.read_text())
    raw["wandb_api_key"] = "SECRET-123"
    raw["huggingface_token"] = "hf_SECRET"
    loaded = normalize(raw)
    assert any("wandb_api_key" in w for w in loaded.warnings)
    out = save_config(loaded.values, tmp_path / "p.json")
    text = out.read_text()
    assert "SECRET" not in text and "wandb_api_key" not in text and "huggingface_token" not in text


def test_missing_keys_take_documented_defaults(tmp_path):
    loaded = load_config(write(tmp_path, {"network_dim": 8}))
    expected = defaults()
    expected["network_dim"] = 8
    assert loaded.values == expected


def test_unknown_keys_are_named_in_a_warning(tmp_path):
    loaded = load_config(write(tmp_path, {"network_dim": 8, "sdxl_frobnicate": 1, "zz_new_key": "x"}))
    assert loaded.values["network_dim"] == 8
    assert any("sdxl_frobnicate" in w and "zz_new_key" in w for w in loaded.warnings)


def test_ignored_key_with_a_value_warns(tmp_path):
    loaded = load_config(write(tmp_path, {"conv_dim": 8}))
    assert any("conv_dim" in w and "no effect" in w for w in loaded.warnings)


def test_every_bad_key_is_reported_at_once(tmp_path):
    bad = {"network_dim": "abc", "enable_bucket": "maybe", "max_resolution": "huge", "LoRA_type": "LyCORIS/LoHa",
           "v2": True, "optimizer": "DAdaptAdam", "learning_rate": "1e400",
           "epoch": 10**30, "clip_skip": [1], "output_name": {"a": 1}}
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, bad))
    message = str(err.value)
    for key in bad:
        assert key in message, key
    assert "LyCORIS/LoHa" in message and "DAdaptAdam" in message and "config.json" in message
    assert len(err.value.problems) == len(bad)


def test_cross_key_problems_name_both_keys(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {"min_bucket_reso": 1024, "max_bucket_reso": 512, "color_aug": True}))
    message = str(err.value)
    assert "min_bucket_reso" in message and "max_bucket_reso" in message
    assert "color_aug" in message and "cache_latents" in message


@pytest.mark.parametrize("content,fragment", [
    ("{not json", "not valid JSON at line 1"),
    ("", "not valid JSON"),
    ("[1, 2, 3]", "not a JSON list"),
    ('"just a string"', "not a JSON string"),
    ("null", "not a JSON null"),
    ("[" * 100000 + "]" * 100000, "nested"),
    (b"\xff\xfe\x00garbage\x80", "not a text file"),
    ('{"network_dim": NaN}', "network_dim"),
    ('{"network_dim": 1e999}', "network_dim"),
    ('{"network_dim": 99999999999999999999999999999999999999}', "network_dim"),
])
def test_hostile_files_get_named_errors(tmp_path, content, fragment):
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert fragment in str(err.value)
    assert str(path) in str(err.value)


def test_huge_file_is_refused_without_reading(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as fh:
        fh.truncate(5 * 1024 * 1024)
    with pytest.raises(ConfigError, match="a few KB"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.json")


def test_utf8_bom_is_accepted(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf" + json.dumps({"output_name": "m\u00e4dchen"}).encode())
    assert load_config(path).values["output_name"] == "m\u00e4dchen"


def test_overrides_apply_and_unknown_override_is_an_error(tmp_path):
    path = write(tmp_path, {"network_dim": 8})
    assert load_config(path, ["network_dim=64", "seed=7"]).values["network_dim"] == 64
    with pytest.raises(ConfigError, match="network_dimm"):
        load_config(path, ["network_dimm=64"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(path, ["network_dim"])


def test_save_is_atomic_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = save_config(defaults(), tmp_path / "p.json")
    before = target.read_text()
    values = dict(defaults(), network_dim=99)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        save_config(values, target)
    assert target.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]  # no temporary left behind


def test_saved_file_is_readable_by_others(tmp_path):
    target = save_config(defaults(), tmp_path / "p.json")
    assert target.stat().st_mode & 0o777 == 0o644


def test_dump_is_deterministic():
    assert dump_kohya(defaults()) == dump_kohya(dict(reversed(list(defaults().items()))))


def test_a_key_given_twice_is_warned_with_both_values(tmp_path):
    path = write(tmp_path, '{"network_dim": 4, "network_alpha": 1, "network_dim": 64}')
    loaded = load_config(path)
    assert loaded.values["network_dim"] == 64
    assert loaded.warnings == ["network_dim is given 2 times (4 then 64); the last one, 64, is used. Remove the others"]


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/escaped", "sub/name", "..\\up", "C:name", "..", "", "a\tb"])
def test_output_name_must_be_a_plain_file_name(name):
    with pytest.raises(ConfigError) as caught:
        normalize(dict(defaults(), output_name=name))
    assert "output_name" in str(caught.value) and "file name" in str(caught.value)


@pytest.mark.parametrize("name", ["my_char", "wwaa girl v2", "name.v1", "日本語"])
def test_plain_output_names_pass(name):
    assert normalize(dict(defaults(), output_name=name)).values["output_name"] == name


def test_a_folder_given_as_the_config_is_named(tmp_path):
    with pytest.raises(ConfigError, match="is a folder, not a JSON file"):
        load_config(tmp_path)
