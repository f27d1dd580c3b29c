"""Bad input through the command line, as a user meets it: each case is refused with exit code 2, a
message naming the file, key or value, no traceback or "internal error", and no earlier file changed.

docs/refused.md lists the same cases and why each is refused.
"""

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "presets" / "quick-tiny-demo.json"
MODULE = "lora_unet_down_blocks_0_attentions_0_proj_in"


def run(*args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE")
    return subprocess.run([sys.executable, "-m", "charlora", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


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
    ("config SDXL", config_with(sdxl=True), ["sdxl", "SDXL"]),
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
]


def snapshot(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("maker, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_by_name(tmp_path, maker, fragments):
    args = maker(tmp_path)
    before = snapshot(tmp_path)
    result = run(*args)
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
