"""Grid, seed and score requests that cannot make a useful image are refused by name before any work
(issue 13: --steps 0/-1, --cfg nan, 100000 px, a billion cells, the same axis twice, --out a file)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from charlora.evaluate import EvaluationError, GridSpec, SeedBatchSpec, build_grid, seed_batch
from charlora.evaluate.grid import plan_cells
from charlora.evaluate.lora_names import LoraIndex

REPO = Path(__file__).resolve().parents[1]


def spec(tmp_path, **kw):
    base = dict(base_model="unused", lora_folder=str(tmp_path), prompt="a girl", output_dir=str(tmp_path / "g"),
                x_kind="cfg", x_values="7,8", y_kind="nothing", y_values="")
    return GridSpec(**{**base, **kw})


class NoRenderer:
    """A renderer that must never be reached: each refusal happens before any work."""

    def render(self, *args, **kwargs):
        raise AssertionError("rendering started for a request that should have been refused")


@pytest.mark.parametrize("change, named", [
    ({"steps": 0}, "steps 0"), ({"steps": -1}, "steps -1"), ({"steps": 10_000}, "steps 10000"),
    ({"cfg": float("nan")}, "CFG nan"), ({"cfg": float("inf")}, "CFG inf"), ({"cfg": 0.0}, "CFG 0.0"),
    ({"width": 100_000}, "width 100000"), ({"height": 8}, "height 8"),
    ({"x_kind": "seed", "x_values": "1-1000", "y_kind": "cfg", "y_values": "1-30", "z_kind": "steps",
      "z_values": "1-100"}, "3,000,000 cells"),
    ({"x_kind": "cfg", "x_values": "7,8", "y_kind": "cfg", "y_values": "9,10"}, "two axes are both 'CFG Scale'"),
])
def test_grid_refusals_name_the_value(tmp_path, change, named):
    with pytest.raises(EvaluationError, match=named.replace("(", r"\(")):
        build_grid(spec(tmp_path, **change), NoRenderer())
    assert not (tmp_path / "g").exists()  # nothing was written


def test_two_prompt_sr_axes_stay_allowed(tmp_path):
    grids, _, _ = plan_cells(spec(tmp_path, prompt="a girl in red", x_kind="prompt_sr", x_values="girl,boy",
                                  y_kind="prompt_sr", y_values="red,blue"), LoraIndex(tmp_path))
    assert [[c.prompt for c in row] for row in grids[0]] == [["a girl in red", "a boy in red"],
                                                              ["a girl in blue", "a boy in blue"]]


def test_out_naming_a_file_is_refused_and_the_file_kept(tmp_path):
    existing = tmp_path / "g"
    existing.write_text("my notes")
    with pytest.raises(EvaluationError, match="is a file; choose a folder"):
        build_grid(spec(tmp_path), NoRenderer())
    assert existing.read_text() == "my notes"


def test_seed_batch_refuses_bad_settings_before_any_work(tmp_path):
    with pytest.raises(EvaluationError, match="CFG nan"):
        seed_batch(SeedBatchSpec(base_model="unused", prompt="a girl", seeds=[1], cfg=float("nan"),
                                 output=str(tmp_path / "s.png")), NoRenderer())


def test_cli_grid_refusal_is_a_message_not_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "charlora", "grid", "--base-model", "unused", "--lora-folder",
                             str(tmp_path), "--prompt", "a girl", "--x", "cfg=7,8", "--steps", "-1", "--out",
                             str(tmp_path / "g")], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 2
    assert "steps -1" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
