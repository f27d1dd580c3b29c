"""'Keep this one': copy the chosen file, archive the rest of the run, never delete or overwrite."""

import os
import stat

import pytest

from charlora.errors import CharLoRAError
from charlora.evaluate.keep import keep_checkpoint, run_files_of

RUN = ["char-000001.safetensors", "char-000002.safetensors", "char-000003.safetensors",
       "char-step00000300.safetensors", "char.safetensors"]
UNRELATED = ["char.json", "other-000001.safetensors", "char-v2.safetensors", "notes.txt"]


@pytest.fixture
def run(tmp_path):
    out = tmp_path / "output"
    out.mkdir()
    for name in RUN + UNRELATED:
        (out / name).write_bytes(f"contents of {name}".encode())
    state = out / "char-000002-state"
    state.mkdir()
    (state / "optimizer.pt").write_bytes(b"state")
    return out


def snapshot(folder):
    """{relative path: bytes} of every file under folder."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_run_files_of_finds_kohya_names_in_order(run):
    names = [p.name for p in run_files_of(run, "char")]
    assert names == ["char-000001.safetensors", "char-000002.safetensors", "char-000003.safetensors",
                     "char-step00000300.safetensors", "char.safetensors"]
    assert run_files_of(run, "other") == [run / "other-000001.safetensors"]
    assert run_files_of(run / "missing", "char") == []


def test_keep_copies_chosen_and_archives_the_rest(run, tmp_path):
    chosen = run / "char-000002.safetensors"
    original = chosen.read_bytes()
    before = snapshot(run)
    lora_dir = tmp_path / "webui" / "models" / "Lora"  # created on demand
    result = keep_checkpoint(chosen, lora_dir, run_files_of(run, "char"))

    assert result.kept == lora_dir / chosen.name
    assert result.kept.read_bytes() == original and chosen.read_bytes() == original  # copied, not moved
    assert os.listdir(lora_dir) == [chosen.name]  # no temporary file left behind
    assert stat.S_IMODE(result.kept.stat().st_mode) == 0o644  # readable by A1111/ComfyUI as another user
    assert result.archive_dir == run / "archive"
    assert sorted(p.name for p in result.archived) == sorted(set(RUN) - {chosen.name})
    assert sorted(os.listdir(run / "archive")) == sorted(set(RUN) - {chosen.name})
    for path in result.archived:
        assert path.read_bytes() == before[path.name]  # moved intact
    after = snapshot(run)
    for name in UNRELATED + [chosen.name, "char-000002-state/optimizer.pt"]:
        assert after[name] == before[name]  # never touched
    assert len(after) == len(before)  # nothing deleted


def test_refuses_to_overwrite_a_different_file_and_moves_nothing(run, tmp_path):
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    theirs = lora_dir / "char-000002.safetensors"
    theirs.write_bytes(b"the user's own LoRA of that name")
    before = snapshot(run)
    with pytest.raises(CharLoRAError, match="char-000002.safetensors.*different file"):
        keep_checkpoint(run / "char-000002.safetensors", lora_dir, run_files_of(run, "char"))
    assert theirs.read_bytes() == b"the user's own LoRA of that name"
    assert snapshot(run) == before and not (run / "archive").exists()
    assert os.listdir(lora_dir) == [theirs.name]


def test_identical_file_at_destination_is_fine(run, tmp_path):
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    (lora_dir / "char.safetensors").write_bytes((run / "char.safetensors").read_bytes())
    result = keep_checkpoint(run / "char.safetensors", lora_dir, run_files_of(run, "char"))
    assert len(result.archived) == 4 and (run / "char.safetensors").exists()


def test_archive_name_clash_gets_a_suffix(run, tmp_path):
    (run / "archive").mkdir()
    (run / "archive" / "char-000001.safetensors").write_bytes(b"archived earlier")
    result = keep_checkpoint(run / "char-000003.safetensors", tmp_path / "Lora", run_files_of(run, "char"))
    assert (run / "archive" / "char-000001.safetensors").read_bytes() == b"archived earlier"
    assert (run / "archive" / "char-000001_2.safetensors").read_bytes() == b"contents of char-000001.safetensors"
    assert run / "archive" / "char-000001_2.safetensors" in result.archived


def test_running_twice_is_harmless(run, tmp_path):
    files = run_files_of(run, "char")
    first = keep_checkpoint(run / "char-000003.safetensors", tmp_path / "Lora", files)
    state = snapshot(tmp_path)
    second = keep_checkpoint(run / "char-000003.safetensors", tmp_path / "Lora", files)
    assert second.kept == first.kept and second.archived == []
    assert snapshot(tmp_path) == state
    # Rescanning the run folder now finds only the kept file: nothing else to archive.
    assert keep_checkpoint(run / "char-000003.safetensors", tmp_path / "Lora", run_files_of(run, "char")).archived == []


def test_destination_is_the_run_folder(run):
    result = keep_checkpoint(run / "char.safetensors", run, run_files_of(run, "char"))
    assert result.kept == run / "char.safetensors" and result.kept.exists()
    assert len(result.archived) == 4


def test_only_passed_files_are_archived(run, tmp_path):
    state = run / "char-000002-state"
    result = keep_checkpoint(run / "char.safetensors", tmp_path / "Lora", [run / "char-000001.safetensors", state])
    assert sorted(p.name for p in result.archived) == ["char-000001.safetensors", "char-000002-state"]
    assert (run / "archive" / "char-000002-state" / "optimizer.pt").read_bytes() == b"state"  # folders move whole
    assert (run / "char-000002.safetensors").exists() and (run / "char.json").exists()


def test_errors_name_the_path(run, tmp_path):
    with pytest.raises(CharLoRAError, match="char-000009.safetensors.*does not exist"):
        keep_checkpoint(run / "char-000009.safetensors", tmp_path / "Lora", [])
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CharLoRAError, match="afile.*not a folder"):
        keep_checkpoint(run / "char.safetensors", tmp_path / "afile", [])
