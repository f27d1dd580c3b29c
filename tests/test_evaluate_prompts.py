"""A1111's prompt syntax, LoRA name resolution and X/Y/Z axis values (charlora.evaluate: prompts, lora_names, axes)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from charlora.evaluate import axes
from charlora.evaluate.axes import axis_label, parse_axis_values, prompt_sr
from charlora.evaluate.lora_names import LoraIndex, kohya_epoch_aliases, resolve_lora
from charlora.evaluate.prompts import EvaluationError, LoraTag, parse_prompt
from charlora.errors import CharLoRAError

USER_PROMPT = "anime, comic, cartoon, portrait of a girl <lora:wwaa-g13l-1-chk:1>, illustration, dark hair"


def write_lora(folder: Path, stem: str, output_name: str | None = None, **extra) -> Path:
    path = folder / f"{stem}.safetensors"
    metadata = {"ss_output_name": output_name} if output_name else {}
    metadata.update(extra)
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 2)}, str(path), metadata=metadata)
    return path


# --------------------------------------------------------------------------- tags

def test_weights_default_single_and_split():
    clean, tags, warnings = parse_prompt("a <lora:one> b <lora:two:0.8> c <lora:three:0.5:1.25>")
    assert clean == "a  b  c "  # removed exactly as re.sub(..., "") does, spaces kept
    assert tags == [LoraTag("one", 1.0, 1.0, "<lora:one>"), LoraTag("two", 0.8, 0.8, "<lora:two:0.8>"),
                    LoraTag("three", 0.5, 1.25, "<lora:three:0.5:1.25>")]
    assert warnings == []


def test_named_args_as_a1111():
    tags = parse_prompt("<lora:a:te=0.3> <lora:b:0.5:unet=0> <lora:c:unet=2:te=0.1> <lora:d:0.4:0.6:te=0.9>").tags
    # unet defaults to te (after te=), named args win over positional ones
    assert [(t.name, t.te_weight, t.unet_weight) for t in tags] == [
        ("a", 0.3, 0.3), ("b", 0.5, 0.0), ("c", 0.1, 2.0), ("d", 0.9, 0.6)]


def test_lyco_is_lora_other_types_removed_with_warning():
    clean, tags, warnings = parse_prompt("x <lyco:ly:0.7>, <hypernet:hn:1> y")
    assert clean == "x ,  y"
    assert tags == [LoraTag("ly", 0.7, 0.7, "<lyco:ly:0.7>")]
    assert len(warnings) == 1 and "<hypernet:hn:1>" in warnings[0] and "hypernet" in warnings[0]


def test_dashes_in_names_and_not_a_tag():
    clean, tags, _ = parse_prompt("<lora:my-char_v2.1:0.9> <not a tag> <a-b:c>")
    assert [t.name for t in tags] == ["my-char_v2.1"]
    assert clean == " <not a tag> <a-b:c>"  # \w+ does not match "a-b", so A1111 leaves it in the prompt


def test_bad_weight_names_the_tag():
    with pytest.raises(EvaluationError, match=r"<lora:x:abc>.*'abc'"):
        parse_prompt("a <lora:x:abc>")
    with pytest.raises(EvaluationError, match=r"<lora:x:1:te=nan>"):
        parse_prompt("<lora:x:1:te=nan>")
    with pytest.raises(EvaluationError, match="names no LoRA"):
        parse_prompt("<lora::1>")
    assert issubclass(EvaluationError, CharLoRAError)


def test_same_name_twice_is_applied_twice_at_the_last_weights():
    clean, tags, warnings = parse_prompt("<lora:a:0.5> x <lora:b:1> <lora:a:0.75:0.25>")
    assert tags == [LoraTag("a", 1.5, 0.5, "<lora:a:0.75:0.25>"), LoraTag("b", 1.0, 1.0, "<lora:b:1>")]
    assert any("appears 2 times" in w for w in warnings)


def test_extra_positional_and_dyn_ignored_with_warning():
    tags, warnings = parse_prompt("<lora:a:0.5:0.6:8:dyn=4>")[1:]
    assert tags == [LoraTag("a", 0.5, 0.6, "<lora:a:0.5:0.6:8:dyn=4>")]
    assert "8, dyn=4" in warnings[0]


# --------------------------------------------------------------------------- names

@pytest.fixture
def kohya_folder(tmp_path):
    """Kohya's output: epoch files and the final file, all with the same ss_output_name."""
    for epoch in (2, 4, 6, 8, 10):
        write_lora(tmp_path, f"wwaa-g13l-1-{epoch:06d}", "wwaa-g13l-1")
    write_lora(tmp_path, "wwaa-g13l-1", "wwaa-g13l-1")
    return tmp_path


def test_resolve_by_stem_epoch_and_unique_alias(kohya_folder):
    unique = write_lora(kohya_folder, "renamed_file", "my_alias")
    index = LoraIndex(kohya_folder)
    assert index.resolve("wwaa-g13l-1") == (kohya_folder / "wwaa-g13l-1.safetensors", None)
    assert index.resolve("wwaa-g13l-1-000004") == (kohya_folder / "wwaa-g13l-1-000004.safetensors", None)
    assert index.resolve("wwaa-g13l-1-4") == (kohya_folder / "wwaa-g13l-1-000004.safetensors", None)
    assert index.resolve("wwaa-g13l-1-04")[0] == kohya_folder / "wwaa-g13l-1-000004.safetensors"
    assert index.resolve("my_alias") == (unique, None)
    assert kohya_epoch_aliases(kohya_folder) == {
        f"wwaa-g13l-1-{e}": kohya_folder / f"wwaa-g13l-1-{e:06d}.safetensors" for e in (2, 4, 6, 8, 10)}


def test_last_epoch_name_finds_the_final_file(tmp_path):
    # Kohya saves epochs 1..3 as NAME-00000N and the last one (4) as NAME.safetensors
    for epoch in (1, 2, 3):
        write_lora(tmp_path, f"char-{epoch:06d}", "char", ss_epoch=str(epoch))
    final = write_lora(tmp_path, "char", "char", ss_epoch="4")
    index = LoraIndex(tmp_path)
    assert index.resolve("char-4") == (final, None)
    assert index.resolve("char-000004") == (final, None)
    assert index.resolve("char-3")[0] == tmp_path / "char-000003.safetensors"
    assert index.resolve("char-5") == (None, "lora 'char-5' not found: rendered without it (as AUTOMATIC1111 does)")


def test_resolve_lora_unknown_name_lists_the_names(kohya_folder):
    assert resolve_lora("wwaa-g13l-1-4.safetensors", kohya_folder) == kohya_folder / "wwaa-g13l-1-000004.safetensors"
    with pytest.raises(EvaluationError) as err:
        resolve_lora("wwaa-7", kohya_folder)
    message = str(err.value)
    assert message.startswith(f"LoRA 'wwaa-7' not found in {kohya_folder}; available: wwaa-g13l-1-000002, ")
    assert "wwaa-g13l-1-000010, wwaa-g13l-1 (an epoch file also as NAME-<epoch>" in message
    write_lora(kohya_folder, "first", "shared")
    write_lora(kohya_folder, "second", "shared")
    with pytest.raises(EvaluationError, match=r"'shared' is the ss_output_name of 2 files"):
        resolve_lora("shared", kohya_folder)
    empty = kohya_folder / "empty"
    empty.mkdir()
    with pytest.raises(EvaluationError, match="holds no .safetensors files"):
        resolve_lora("x", empty)


def test_not_found_and_ambiguous_alias(tmp_path):
    write_lora(tmp_path, "first", "shared")
    write_lora(tmp_path, "second", "shared")
    index = LoraIndex(tmp_path)
    assert index.resolve("nope") == (None, "lora 'nope' not found: rendered without it (as AUTOMATIC1111 does)")
    path, warning = index.resolve("shared")
    assert path is None
    assert warning.startswith("lora 'shared' not found: rendered without it (as AUTOMATIC1111 does)")
    assert "first.safetensors" in warning and "second.safetensors" in warning
    assert index.resolve("first-3")[0] is None  # an epoch name only finds 6-digit Kohya files


def test_headers_read_once_and_bad_files_tolerated(tmp_path, monkeypatch):
    for i in range(5):
        write_lora(tmp_path, f"f{i}", f"alias{i}")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "notes.txt").write_text("x")
    from charlora.lora import kohya_file

    calls = []
    real = kohya_file.read_header
    monkeypatch.setattr(kohya_file, "read_header", lambda p: calls.append(p) or real(p))
    index = LoraIndex(tmp_path)
    assert index.resolve("f1")[0] == tmp_path / "f1.safetensors" and calls == []  # stems need no header
    assert index.resolve("alias3")[0] == tmp_path / "f3.safetensors"
    assert index.resolve("alias4")[0] == tmp_path / "f4.safetensors"
    assert index.resolve("missing")[0] is None
    assert len(calls) == 6  # each .safetensors header once, the .txt never
    assert index.resolve("broken")[0] == tmp_path / "broken.safetensors"
    assert len(index.unreadable) == 1 and "broken" in index.unreadable[0]


def test_missing_folder(tmp_path):
    with pytest.raises(EvaluationError, match="does not exist"):
        LoraIndex(tmp_path / "nowhere")


# --------------------------------------------------------------------------- Prompt S/R

def test_prompt_sr_replaces_everywhere_in_prompt_and_negative():
    pairs = prompt_sr("red dress, red hat", "red eyes", ["red", "blue", ""])
    assert pairs == [("red dress, red hat", "red eyes"), ("blue dress, blue hat", "blue eyes"),
                     (" dress,  hat", " eyes")]
    assert prompt_sr("a cat", "ugly", ["ugly", "blurry"]) == [("a cat", "ugly"), ("a cat", "blurry")]


def test_prompt_sr_error_as_a1111():
    with pytest.raises(EvaluationError, match="Prompt S/R did not find dog in prompt or negative prompt"):
        prompt_sr("a cat", "", ["dog", "cow"])


def test_users_exact_case(kohya_folder):
    values = parse_axis_values("prompt_sr", "chk,2,4,6,8,10,12")
    pairs = prompt_sr(USER_PROMPT, "", values)
    assert [p for p, _ in pairs][:2] == [USER_PROMPT, USER_PROMPT.replace("wwaa-g13l-1-chk", "wwaa-g13l-1-2")]
    index = LoraIndex(kohya_folder)
    resolved = []
    for prompt, _ in pairs:
        clean, tags, warnings = parse_prompt(prompt)
        assert clean == "anime, comic, cartoon, portrait of a girl , illustration, dark hair" and not warnings
        assert len(tags) == 1 and tags[0].te_weight == tags[0].unet_weight == 1.0
        resolved.append(index.resolve(tags[0].name))
    # "chk" names no file: the base model cell, as the user sees in A1111
    assert resolved[0] == (None, "lora 'wwaa-g13l-1-chk' not found: rendered without it (as AUTOMATIC1111 does)")
    assert [p.name for p, _ in resolved[1:6]] == [f"wwaa-g13l-1-{e:06d}.safetensors" for e in (2, 4, 6, 8, 10)]
    assert resolved[6][0] is None  # epoch 12 was never saved


# --------------------------------------------------------------------------- axis values

@pytest.mark.parametrize("kind, text, expected", [
    ("cfg", "7,8,9,10", [7.0, 8.0, 9.0, 10.0]),
    ("cfg", " 7 , 7.5,8", [7.0, 7.5, 8.0]),
    ("cfg", "7-9", [7.0, 8.0, 9.0]),
    ("cfg", "7-9 (+0.5)", [7.0, 7.5, 8.0, 8.5, 9.0]),
    ("cfg", "1-2 [3]", [1.0, 1.5, 2.0]),
    ("cfg", "0.5-1", [0.5, 1.5]),  # A1111: np.arange(start, end + step, step) with step 1
    ("lora_weight", "0-1 [5]", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("lora_weight", "-0.5, 1", [-0.5, 1.0]),
    ("seed", "1-5", [1, 2, 3, 4, 5]),
    ("seed", "1-5 (+2)", [1, 3, 5]),
    ("seed", "10-1 (-3)", [10, 7, 4]),
    ("seed", "5-1 (-1)", [5, 4, 3]),  # A1111 adds 1 to the end even counting down
    ("seed", "5, 8-10", [5, 8, 9, 10]),
    ("steps", "1-10 [5]", [1, 3, 5, 7, 10]),  # linspace truncated to int
    ("steps", "20\n30", [20, 30]),  # newlines separate as in csv
    ("prompt_sr", 'chk, "a, b",c', ["chk", "a, b", "c"]),  # skipinitialspace: quotes after ", " work
    ("prompt_sr", 'chk,"x"', ["chk", "x"]),
    ("sampler", "euler_a, DDIM", ["euler_a", "DDIM"]),
    ("checkpoint", "none, wwaa-000002.safetensors, No LoRA, wwaa", [None, "wwaa-000002", None, "wwaa"]),
    ("nothing", "", [None]),
])
def test_axis_syntax(kind, text, expected):
    assert parse_axis_values(kind, text) == expected


def test_float_range_keeps_numpy_rounding():
    values = parse_axis_values("cfg", "0.1-0.3 (+0.1)")  # np.arange overshoots, as in A1111
    assert values == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert [axis_label("cfg", v) for v in values] == ["CFG Scale: 0.1", "CFG Scale: 0.2", "CFG Scale: 0.3",
                                                      "CFG Scale: 0.4"]


@pytest.mark.parametrize("kind, text, message", [
    ("cfg", "", "CFG Scale axis has no values"),
    ("seed", " , ", "Seed axis has no values"),
    ("prompt_sr", "", "Prompt S/R axis has no values"),
    ("checkpoint", "", "LoRA checkpoint axis has no values"),
    ("cfg", "7,,8", "CFG Scale values: an empty value"),
    ("steps", "20,", "Steps values: an empty value"),
    ("cfg", "seven", "CFG Scale value 'seven' is not a number"),
    ("steps", "7.5", "Steps value '7.5' is not a whole number"),
    ("seed", "-1", "Seed -1 means a random seed"),
    ("seed", "-3--1", "Seed -1 means a random seed"),
    ("steps", "0,10", "use 1 or more steps"),
    ("seed", "5-1", "gives no values"),
    ("seed", "1-5 (+0)", "step of 0"),
    ("seed", "1-100000000", "more than 1000"),
    ("cfg", "nan", "not a finite number"),
    ("prompt_sr", ",a", "first value is the text to search for"),
    ("sampler", "euler,,ddim", "Sampler values: an empty value"),
    ("bogus", "1", "unknown axis type 'bogus'"),
])
def test_axis_errors_name_the_axis(kind, text, message):
    with pytest.raises(EvaluationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_axis_values(kind, text)


def test_sampler_and_checkpoint_choices():
    samplers = ["euler_a", "DPM++ 2M", "ddim"]
    assert parse_axis_values("sampler", "EULER_A, dpm++ 2m", choices=samplers) == ["euler_a", "DPM++ 2M"]
    with pytest.raises(EvaluationError, match="Unknown sampler: heun; choose from euler_a"):
        parse_axis_values("sampler", "euler_a,heun", choices=samplers)
    assert parse_axis_values("checkpoint", "none,a-000002", choices=["a-000002", "a"]) == [None, "a-000002"]
    with pytest.raises(EvaluationError, match="Unknown checkpoint: b"):
        parse_axis_values("checkpoint", "b", choices=["a"])


def test_labels_as_a1111():
    assert axis_label("cfg", 7) == "CFG Scale: 7.0"
    assert axis_label("cfg", 7.5) == "CFG Scale: 7.5"
    assert axis_label("seed", 5) == "Seed: 5"
    assert axis_label("steps", 20) == "Steps: 20"
    assert axis_label("sampler", "euler_a") == "euler_a"  # A1111's Sampler axis uses format_value: no title
    assert axis_label("prompt_sr", "wwaa-g13l-1-2") == "wwaa-g13l-1-2"
    assert axis_label("lora_weight", 0.8) == "LoRA weight: 0.8"
    assert axis_label("checkpoint", None) == "no LoRA"
    assert axis_label("checkpoint", "none") == "no LoRA"
    assert axis_label("checkpoint", "wwaa-000002.safetensors") == "wwaa-000002"
    assert axis_label("checkpoint", Path("/x/wwaa.v2-000004.safetensors")) == "wwaa.v2-000004"
    assert axis_label("nothing", None) == ""
    assert set(axes.AXIS_TITLES) == set(axes.AXIS_KINDS)
