"""`python -m charlora demo`: the whole story on the toy model, as a newcomer types it (two epochs here)."""

from pathlib import Path

import pytest

from charlora.cli import main

pytestmark = pytest.mark.slow  # the whole demo: minutes


def test_the_demo_runs_the_story_and_keeps_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", str(out), "--epochs", "2"]) == 0
    printed = capsys.readouterr().out
    for step in ("1/6", "2/6", "3/6", "4/6", "5/6", "6/6", "recommended:", "kept:"):
        assert step in printed, step
    assert len(list((out / "img" / "10_wwaa figure").glob("*.png"))) == 12
    grid = next((out / "grid").glob("grid-*.png"))
    assert grid.stat().st_size > 0
    assert (out / "seeds.png").is_file()
    kept = list((out / "kept").glob("wwaa-demo*.safetensors"))
    assert len(kept) == 1
    archived = list((out / "model" / "archive").glob("*.safetensors"))
    assert len(archived) == 1  # two epoch files: one kept, the other archived
    assert Path(out / "score" / "wwaa-demo-scores.json").is_file()


def test_the_demo_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    (tmp_path / "something.txt").write_text("mine")
    assert main(["demo", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "something.txt").read_text() == "mine"
