"""Built-in presets load cleanly; user presets go to the user's own folder, never into presets/."""

import json

import pytest

from charlora import presets
from charlora.errors import CharLoRAError
from charlora.params import load_config


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARLORA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_builtin_presets_exist_and_load_without_warnings(home):
    names = {p.name for p in presets.list_presets() if p.builtin}
    assert {"character-16gb", "character-8gb-lowvram", "quick-tiny-demo"} <= names
    for preset in presets.list_presets():
        loaded = load_config(preset.path)
        assert loaded.warnings == [], preset.name


def test_16gb_preset_is_the_seed_setup_with_paths_empty(home):
    v = presets.load_preset("character-16gb").values
    assert (v["network_dim"], v["network_alpha"], v["optimizer"], v["epoch"]) == (128, 1.0, "AdamW8bit", 12)
    assert v["train_data_dir"] == v["pretrained_model_name_or_path"] == v["output_dir"] == ""


def test_low_vram_preset_saves_memory(home):
    low = presets.load_preset("character-8gb-lowvram").values
    high = presets.load_preset("character-16gb").values
    assert low["gradient_checkpointing"] and low["network_dim"] < high["network_dim"]


def test_user_preset_goes_to_user_folder(home):
    values = dict(presets.load_preset("quick-tiny-demo").values, network_dim=12)
    path = presets.save_user_preset("my girl v2", values)
    assert path == home / "presets" / "my girl v2.json"
    assert json.loads(path.read_text())["network_dim"] == 12
    listed = {p.name: p for p in presets.list_presets()}
    assert not listed["my girl v2"].builtin
    assert presets.load_preset("my girl v2").values["network_dim"] == 12
    assert not (presets.BUILTIN_DIR / "my girl v2.json").exists()


@pytest.mark.parametrize("name", ["../escape", "a/b", "", "character-16gb", ".hidden", "x" * 81])
def test_bad_or_builtin_names_are_refused(home, name):
    with pytest.raises(CharLoRAError):
        presets.save_user_preset(name, presets.load_preset("quick-tiny-demo").values)
    assert not (home / "presets").exists() or list((home / "presets").iterdir()) == []


def test_unknown_preset_lists_what_exists(home):
    with pytest.raises(CharLoRAError, match="character-16gb"):
        presets.find_preset("nope")


def test_save_as_never_replaces_an_existing_preset(home):
    first = dict(presets.load_preset("quick-tiny-demo").values, network_dim=12)
    path = presets.save_user_preset("mine", first)
    with pytest.raises(CharLoRAError, match="already exists.*press Save to overwrite"):
        presets.save_user_preset("mine", dict(first, network_dim=64))
    assert json.loads(path.read_text())["network_dim"] == 12  # untouched
    presets.save_user_preset("mine", dict(first, network_dim=64), overwrite=True)  # Save of the selected one
    assert json.loads(path.read_text())["network_dim"] == 64
