"""Bad input through the command line, as a user meets it: each case is refused with exit code 2, a
message naming the file, key or value, no traceback or "internal error", and no earlier file changed.

Each case runs the CLI's main() in this process (the same parser, handlers and messages as
`python -m charlora`); tests/test_cli.py and the kill test cover the real interpreter's exit.
docs/refused.md says what is refused and why.
"""

import contextlib
import hashlib
import io
import json
import struct
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "presets" / "quick-tiny-demo.json"
MODULE = "lora_unet_down_blocks_0_attentions_0_proj_in"


def run_in_process(*args):
    """`python -m charlora ARGS` as its main() runs it, in this process: the same parser, handlers and
    messages, without ~4 s of interpreter and torch start-up per case (76 cases)."""
    from charlora.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def raw_safetensors(path: Path, header: dict, data: bytes) -> Path:
    """A safetensors file with exactly this header (no checks): how damaged or hand-made files look."""
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def lora_header(down=(4, 8), up=(8, 4), alpha=()):
    """A one-module LoRA's header and zero data, with the given shapes (fp32)."""
    header, offset = {}, 0
    for suffix, shape in (("lora_down.weight", down), ("lora_up.weight", up), ("alpha", alpha)):
        size = 4 * int(torch.tensor(shape).prod()) if shape else 4
        header[f"{MODULE}.{suffix}"] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    return header, bytes(offset)


def lora_file(path: Path, fill=0.1) -> Path:
    save_file({f"{MODULE}.lora_down.weight": torch.full((4, 8), fill), f"{MODULE}.lora_up.weight": torch.ones(8, 4),
               f"{MODULE}.alpha": torch.tensor(4.0)}, str(path))
    return path


# each maker builds its input in a folder and returns the command-line arguments
def folder_as_config(tmp):
    (tmp / "configs").mkdir()
    return ["config", "check", tmp / "configs"]


def config_with(**values):
    def make(tmp):
        raw = json.loads(PRESET.read_text())
        raw.update(values)
        (tmp / "bad.json").write_text(json.dumps(raw))
        return ["config", "check", tmp / "bad.json"]
    return make


def train_with(**values):
    def make(tmp):
        raw = json.loads(PRESET.read_text())
        raw.update(output_dir=str(tmp / "out"), pretrained_model_name_or_path=str(tmp / "model.safetensors"))
        raw.update({k: str(tmp / v) if k.endswith("_dir") or k == "resume" else v for k, v in values.items()})
        (tmp / "img" / "2_girl").mkdir(parents=True, exist_ok=True)
        (tmp / "out").mkdir(exist_ok=True)
        (tmp / "out" / "tiny-demo-000001.safetensors").write_bytes(b"an earlier run's file")
        (tmp / "run.json").write_text(json.dumps(raw))
        return ["train", "--config", tmp / "run.json"]
    return make


def config_file(content: bytes, name="bad.json", *extra):
    def make(tmp):
        (tmp / name).write_bytes(content)
        return ["config", "check", tmp / name, *extra]
    return make


def torch_pickle_renamed(tmp):
    torch.save({f"{MODULE}.lora_down.weight": torch.zeros(4, 8)}, tmp / "pickle.safetensors")
    return ["lora", "inspect", tmp / "pickle.safetensors"]


def header_edit(edit):
    def make(tmp):
        header, data = lora_header()
        edit(header)
        raw_safetensors(tmp / "bad.safetensors", header, data)
        return ["lora", "inspect", tmp / "bad.safetensors"]
    return make


def shapes(**kwargs):
    def make(tmp):
        raw_safetensors(tmp / "bad.safetensors", *lora_header(**kwargs))
        return ["lora", "inspect", tmp / "bad.safetensors"]
    return make


def nan_weights(*flags):
    def make(tmp):
        lora_file(tmp / "nan.safetensors", fill=float("nan"))
        return ["lora", "inspect", tmp / "nan.safetensors", *flags]
    return make


MODEL = "{tiny model}"  # replaced by the tiny model's single file in the test (built once per session)


def images(tmp, folder="img/2_girl", count=1):
    from dataset_helpers import pattern, save
    for i in range(count):
        save(tmp / folder / f"{i}.png", pattern(64, 64, i), "girl")
    return tmp / folder.split("/")[0]


def grid(*extra, prompt="a girl <lora:tiny:1>"):
    def make(tmp):
        (tmp / "loras").mkdir()
        lora_file(tmp / "loras" / "tiny.safetensors")
        (tmp / "grids").mkdir()
        (tmp / "grids" / "earlier.png").write_bytes(b"an earlier grid")
        return ["grid", "--base-model", MODEL, "--lora-folder", tmp / "loras", "--out", tmp / "grids",
                "--prompt", prompt, "--steps", "2", "--size", "64", *extra]
    return make


def grid_out_is_a_file(tmp):
    args = grid()(tmp)
    args[args.index("--out") + 1] = tmp / "grids" / "earlier.png"
    return args


def grid_no_lora_folder(tmp):
    args = grid()(tmp)
    args[args.index("--lora-folder") + 1] = tmp / "no-such-loras"
    return args


def seeds(*extra):
    def make(tmp):
        (tmp / "loras").mkdir()
        lora_file(tmp / "loras" / "tiny.safetensors")
        return ["seeds", "--base-model", MODEL, "--lora-folder", tmp / "loras", "--out", tmp / "sheet.png",
                "--prompt", "a girl", "--steps", "2", "--size", "64", *extra]
    return make


def score(*extra):
    def make(tmp):
        (tmp / "loras").mkdir()
        lora_file(tmp / "loras" / "tiny-000001.safetensors")
        images(tmp)
        return ["score", "--base-model", MODEL, "--lora-folder", tmp / "loras", "--out", tmp / "score",
                "--name", "tiny", "--train-data-dir", tmp / "img", "--steps", "2", "--size", "64",
                "--scorer", "tiny", *extra]
    return make


def lora_bytes(content: bytes, name="bad.safetensors"):
    def make(tmp):
        (tmp / name).write_bytes(content)
        return ["lora", "inspect", tmp / name]
    return make


def truncated_lora(tmp):
    blob = lora_file(tmp / "whole.safetensors").read_bytes()
    (tmp / "cut.safetensors").write_bytes(blob[:len(blob) - 20])
    return ["lora", "inspect", tmp / "cut.safetensors"]


def dataset_folder(*names, check_args=()):
    def make(tmp):
        for name in names:
            images(tmp, f"img/{name}")
        return ["dataset", "check", tmp / "img", *check_args]
    return make


def dataset_is_a_file(tmp):
    (tmp / "img").write_text("not a folder")
    return ["dataset", "check", tmp / "img"]


def broken_image_only(tmp):
    (tmp / "img" / "2_girl").mkdir(parents=True)
    (tmp / "img" / "2_girl" / "a.png").write_bytes(b"not a png")
    return ["dataset", "check", tmp / "img"]


def not_a_lora(tmp):
    save_file({"x": torch.zeros(2)}, str(tmp / "x.safetensors"))
    return ["lora", "inspect", tmp / "x.safetensors"]


def train_model(model_kind):
    def make(tmp):
        args = train_with(train_data_dir="img")(tmp)
        images(tmp)
        if model_kind == "text":
            (tmp / "model.safetensors").write_text("not a model\n")
        elif model_kind == "folder":
            (tmp / "model.safetensors").mkdir()
        return args
    return make


CASES = [
    # (id, maker, fragments the output must hold)
    ("config is a folder", folder_as_config, ["configs", "is a folder, not a JSON file"]),
    ("output_name climbs out", config_with(output_name="../../escaped"), ["output_name", "'../../escaped'"]),
    ("output_name absolute", config_with(output_name="/tmp/escaped"), ["output_name", "'/tmp/escaped'"]),
    ("output_name backslash", config_with(output_name="..\\up"), ["output_name", "not a plain file name"]),
    ("output_name empty", config_with(output_name=""), ["output_name", "empty"]),
    ("output_name dots", config_with(output_name=".."), ["output_name", "'..'"]),
    ("config not JSON", config_file(b'{"network_dim": 4,'), ["bad.json", "not valid JSON at line 1"]),
    ("config a JSON list", config_file(b"[1, 2]"), ["bad.json", "not a JSON list"]),
    ("config not text", config_file(b"\xff\xfe\x00binary"), ["bad.json", "not a text file"]),
    ("config missing", lambda tmp: ["config", "check", tmp / "nothere.json"], ["nothere.json", "no such file"]),
    ("config value not a number", config_with(network_dim="abc"), ["network_dim", "'abc'"]),
    ("config SD 2.x", config_with(v2=True), ["v2", "2.x"]),
    ("--set unknown key", config_file(b"{}", "ok.json", "--set", "netwrk_dim=4"), ["netwrk_dim", "unknown key"]),
    ("resume not a state", train_with(train_data_dir="img", resume="img"), ["resume", "not a CharLoRA training state"]),
    ("train_data_dir missing", train_with(train_data_dir="no-such-images"), ["train_data_dir", "no-such-images"]),
    ("reg_data_dir missing", train_with(train_data_dir="img", reg_data_dir="no-such-reg"),
     ["reg_data_dir", "no-such-reg"]),
    ("train output_name escapes", train_with(train_data_dir="img", output_name="../escaped"),
     ["output_name", "'../escaped'"]),
    ("torch pickle named .safetensors", torch_pickle_renamed, ["pickle.safetensors", "PyTorch pickle"]),
    ("entry without shape", header_edit(lambda h: h[f"{MODULE}.lora_down.weight"].pop("shape")),
     [f"{MODULE}.lora_down.weight", "no valid shape"]),
    ("number instead of entry", header_edit(lambda h: h.__setitem__(f"{MODULE}.lora_up.weight", 5)),
     [f"{MODULE}.lora_up.weight", "not a tensor description"]),
    ("entry without data_offsets", header_edit(lambda h: h[f"{MODULE}.alpha"].pop("data_offsets")),
     [f"{MODULE}.alpha", "data_offsets"]),
    ("metadata not text", header_edit(lambda h: h.__setitem__("__metadata__", {"ss_x": 1})), ["__metadata__"]),
    ("alpha of shape [3]", shapes(alpha=(3,)), [MODULE, "alpha of shape [3]"]),
    ("up matrix 1-D", shapes(up=(8,)), [MODULE, "lora_up of shape [8]"]),
    ("up matrix wrong rank", shapes(up=(8, 2)), [MODULE, "its 2nd size must be 4"]),
    ("up matrix 3x3 conv", shapes(up=(8, 4, 3, 3)), [MODULE, "lora_up of shape [8, 4, 3, 3]"]),
    ("NaN weights", nan_weights(), [f"{MODULE}.lora_down.weight", "NaN"]),
    ("NaN weights --json", nan_weights("--json"), [f"{MODULE}.lora_down.weight", "NaN"]),
    # configs
    ("unknown LoRA_type", config_with(LoRA_type="Mystery"), ["LoRA_type: 'Mystery'", "is not one of"]),
    ("network_dim -1", config_with(network_dim=-1), ["network_dim: -1", "below the minimum 1"]),
    ("network_dim 1e9", config_with(network_dim=1e9), ["network_dim", "above the maximum 1024"]),
    ("learning_rate fast", config_with(learning_rate="fast"), ["learning_rate: 'fast'", "not a number"]),
    ("max_resolution abc", config_with(max_resolution="abc"), ["max_resolution: 'abc'", "not a resolution"]),
    ("epoch 0", config_with(epoch=0), ["epoch: 0", "below the minimum 1"]),
    ("train_batch_size 0", config_with(train_batch_size=0), ["train_batch_size: 0", "below the minimum 1"]),
    ("optimizer unknown", config_with(optimizer="TurboAdam"), ["optimizer: 'TurboAdam'", "is not one of"]),
    ("lr_scheduler unknown", config_with(lr_scheduler="zigzag"), ["lr_scheduler: 'zigzag'", "is not one of"]),
    ("mixed_precision unknown", config_with(mixed_precision="fp7"), ["mixed_precision: 'fp7'", "is not one of"]),
    ("--set without =", config_file(b"{}", "ok.json", "--set", "network_dim"),
     ["--set 'network_dim'", "expected key=value"]),
    ("--set bad value", config_file(b"{}", "ok.json", "--set", "network_dim=lots"),
     ["network_dim: 'lots'", "not a whole number"]),
    ("config empty file", config_file(b""), ["bad.json", "not valid JSON"]),
    ("config a JSON string", config_file(b'"hello"'), ["bad.json", "not a JSON string"]),
    # datasets and images
    ("dataset repeats too big", dataset_folder("999999999_name"), ["999999999_name", "over 10000"]),
    ("dataset missing", lambda tmp: ["dataset", "check", tmp / "no-such-folder"], ["no-such-folder", "does not exist"]),
    ("dataset no concept folder", dataset_folder("girl"), ["girl", "no leading repeat count"]),
    ("dataset is a file", dataset_is_a_file, ["img'", "is not a folder"]),
    ("dataset --reg missing", dataset_folder("2_girl", check_args=("--reg", "no-such-reg")),
     ["no-such-reg", "does not exist"]),
    ("dataset only broken image", broken_image_only, ["a.png", "not an image"]),
    # training
    ("train model missing", train_model("missing"), ["model.safetensors does not exist"]),
    ("train model a text file", train_model("text"), ["model.safetensors", "not a model file"]),
    ("train model a folder", train_model("folder"), ["model.safetensors", "not a diffusers model folder"]),
    ("train empty image folder", train_with(train_data_dir="img"), ["2_girl", "has no images"]),
    # LoRA files
    ("LoRA a text file", lora_bytes(b"hello, I am a text file\n" * 4), ["bad.safetensors", "not a safetensors file"]),
    ("LoRA truncated", truncated_lora, ["cut.safetensors", "truncated"]),
    ("LoRA empty file", lora_bytes(b""), ["bad.safetensors", "only 0 bytes"]),
    ("LoRA header length too big", lora_bytes(struct.pack("<Q", 10**12) + b"{}"),
     ["bad.safetensors", "not a safetensors file"]),
    ("LoRA missing", lambda tmp: ["lora", "inspect", tmp / "nothere.safetensors"],
     ["nothere.safetensors", "no such file"]),
    ("LoRA no LoRA weights", not_a_lora, ["x.safetensors", "not a LoRA"]),
    # grid requests and prompts
    ("grid steps 0", grid("--steps", "0"), ["steps 0", "use 1 to 150"]),
    ("grid steps -1", grid("--steps", "-1"), ["steps -1", "use 1 to 150"]),
    ("grid steps 10000", grid("--steps", "10000"), ["steps 10000", "use 1 to 150"]),
    ("grid cfg nan", grid("--cfg", "nan"), ["CFG nan", "from 1 to 30"]),
    ("grid cfg inf", grid("--cfg", "inf"), ["CFG inf", "from 1 to 30"]),
    ("grid cfg 0", grid("--cfg", "0"), ["CFG 0.0", "from 1 to 30"]),
    ("grid size huge", grid("--size", "100000x100000"), ["width 100000", "64 to 2048"]),
    ("grid size abc", grid("--size", "abc"), ["--size 'abc'", "512x768"]),
    ("grid too many cells", grid("--x", "seed=1-1000", "--y", "steps=1-1000", "--z", "cfg=1-1000"),
     ["1,000,000,000 cells", "at most 1,000"]),
    ("grid same axis twice", grid("--x", "cfg=7,8", "--y", "cfg=9"), ["'CFG Scale'", "used once"]),
    ("grid unknown axis", grid("--x", "colour=1,2"), ["'colour'", "unknown axis"]),
    ("grid out is a file", grid_out_is_a_file, ["earlier.png", "is a file"]),
    ("grid LoRA folder missing", grid_no_lora_folder, ["no-such-loras", "does not exist"]),
    ("grid LoRA weight not a number", grid(prompt="a girl <lora:tiny:lots>"),
     ["<lora:tiny:lots>", "'lots' is not a number"]),
    ("grid sampler unknown", grid("--sampler", "warp_drive"), ["sampler 'warp_drive' is not known"]),
    ("seeds unknown --lora", seeds("--lora", "nosuch"), ["'nosuch' not found"]),
    ("seeds bad range", seeds("--seeds", "8-1"), ["'8-1'", "gives no values"]),
    ("score no prompts", score(), ["--prompt", "required"]),
]


def snapshot(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("maker, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_by_name(tmp_path, maker, fragments, request):
    args = maker(tmp_path)
    if MODEL in args:
        args[args.index(MODEL)] = request.getfixturevalue("tiny_model").single_file
    before = snapshot(tmp_path)
    result = run_in_process(*args)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    for fragment in fragments:
        assert fragment in output, (fragment, output)
    assert "Traceback" not in output and "internal error" not in output, output
    after = snapshot(tmp_path)
    assert {p: after.get(p) for p in before} == before  # nothing that was there changed or went away
    if "--json" in args:
        json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))
    assert not list(tmp_path.parent.glob("escaped*"))  # nothing written outside the folder
