"""The parameter table: complete for the user's Kohya config, and internally consistent."""

import json
import math
from pathlib import Path

import pytest

from charlora.params import GROUPS, PARAMS, PARAMS_BY_KEY, TIERS, cross_check, defaults
from charlora.params.docs import markdown_table
from charlora.params.spec import KINDS

from conftest import SEED_CONFIG  # noqa: E402

SEED = SEED_CONFIG
REPO = Path(__file__).resolve().parents[1]


def test_every_seed_key_is_declared():
    seed = json.loads(SEED.read_text())
    assert len(seed) == 110
    missing = [k for k in seed if k not in PARAMS_BY_KEY]
    assert missing == []


def test_keys_are_unique():
    assert len(PARAMS_BY_KEY) == len(PARAMS)


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.key)
def test_declaration_is_consistent(param):
    assert param.kind in KINDS
    assert param.group in GROUPS
    assert param.tier in TIERS
    assert param.help and "\n" not in param.help
    assert param.effect in ("supported", "ignored", "restricted")
    if param.effect != "supported":
        assert param.reason, "ignored/restricted parameters say why"
    if param.effect == "restricted":
        assert param.allowed and param.default in param.allowed
    if param.kind in ("int", "float") and not param.choices:
        # bounded, so a hostile file's huge numbers are refused
        assert param.min is not None and param.max is not None and param.min <= param.max
    # the documented default is a value the parameter itself accepts, unchanged
    if param.default is None:
        assert param.optional
    else:
        assert param.coerce(param.default) == param.default
    assert param.check_allowed(param.default) is None


def test_defaults_pass_cross_checks():
    assert cross_check(defaults()) == []


def test_docs_parameters_md_is_generated_from_the_table():
    doc = (REPO / "docs" / "parameters.md").read_text()
    assert doc == markdown_table(), "run: python -m charlora params --markdown > docs/parameters.md"


@pytest.mark.parametrize("raw,expected", [
    ("1", 1), (1, 1), (1.0, 1), (" 2 ", 2), ("2.0", 2),
])
def test_int_accepts_kohya_shapes(raw, expected):
    assert PARAMS_BY_KEY["clip_skip"].coerce(raw) == expected


@pytest.mark.parametrize("raw", ["x", True, 1.5, "1.5", [], {}, None, "", float("nan"), 10**400, 13, 0])
def test_int_refuses_bad_values(raw):
    with pytest.raises(ValueError) as err:
        PARAMS_BY_KEY["clip_skip"].coerce(raw)
    assert str(err.value)


def test_optional_empty_string_means_not_set():
    assert PARAMS_BY_KEY["seed"].coerce("") is None
    assert PARAMS_BY_KEY["seed"].coerce("42") == 42
    assert PARAMS_BY_KEY["max_train_steps"].coerce(None) is None


def test_float_refuses_non_finite_and_huge():
    lr = PARAMS_BY_KEY["learning_rate"]
    for bad in (math.inf, float("nan"), "inf", 10**400, "1e400", 2.0):
        with pytest.raises(ValueError):
            lr.coerce(bad)
    assert lr.coerce("5e-5") == 5e-5


@pytest.mark.parametrize("raw,expected", [
    ("512,512", "512,512"), ("512", "512,512"), (512, "512,512"), (" 768 , 512 ", "768,512"),
    ([640, 448], "640,448"), ("640x448", "640,448"),
])
def test_resolution_shapes(raw, expected):
    assert PARAMS_BY_KEY["max_resolution"].coerce(raw) == expected


@pytest.mark.parametrize("raw", ["512,512,512", "abc", "513,512", "0,0", True, "99999,512", {"w": 1}])
def test_resolution_refuses(raw):
    with pytest.raises(ValueError):
        PARAMS_BY_KEY["max_resolution"].coerce(raw)


def test_xformers_old_boolean_and_case():
    xf = PARAMS_BY_KEY["xformers"]
    assert xf.coerce(True) == "xformers"
    assert xf.coerce(False) == "none"
    assert xf.coerce("SDPA") == "sdpa"
    with pytest.raises(ValueError):
        xf.coerce("flash")


def test_path_quotes_are_stripped():
    path = PARAMS_BY_KEY["pretrained_model_name_or_path"]
    assert path.coerce('"C:\\AI\\v1-5.safetensors"') == "C:\\AI\\v1-5.safetensors"
    assert path.coerce("'\"/models/x.ckpt\"'") == "/models/x.ckpt"


def test_bool_shapes():
    b = PARAMS_BY_KEY["enable_bucket"]
    assert b.coerce(True) is True and b.coerce("false") is False and b.coerce(1) is True
    with pytest.raises(ValueError):
        b.coerce("maybe")


def test_restricted_value_message_names_value_and_alternative():
    lora_type = PARAMS_BY_KEY["LoRA_type"]
    message = lora_type.check_allowed(lora_type.coerce("LyCORIS/LoHa"))
    assert "LyCORIS/LoHa" in message and "Standard" in message
