"""tools/compare_kohya.py: the side-by-side table from the peers harness's results (issue 16).

The rounds themselves need sd-scripts and a 4.3 GB model (docs/benchmarks.md); here the table is built from
result files in measure.py's format, and the run refuses a folder that is not a peers folder."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "compare_kohya.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("compare_kohya", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def result(folder: Path, label: str, cpu: float, rss: float, start: float, wall: float, rc: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{label}.json").write_text(json.dumps({
        "label": label, "rc": rc, "median_cpu_s_per_step": cpu, "peak_tree_rss_gib_sampled": rss,
        "start_to_first_step_done_s": start, "median_s_per_step": wall}))


def test_the_table_gives_per_round_ratios_medians_and_the_goal(tmp_path, capsys):
    results = tmp_path / "results"
    result(results, "r1_256_kohya", 10.0, 8.0, 40.0, 6.0)
    result(results, "r1_256_charlora", 7.0, 5.6, 16.0, 4.2)
    result(results, "r2_256_kohya", 10.0, 8.0, 50.0, 6.0)
    result(results, "r2_256_charlora", 9.0, 6.4, 30.0, 5.4)
    result(results, "r3_256_kohya", 10.0, 8.0, 40.0, 6.0)
    result(results, "r3_256_charlora", 8.0, 6.0, 24.0, 4.8, rc=1)  # a failed run: its round is left out
    result(results, "r1_512_kohya", 30.0, 9.0, 60.0, 20.0)  # another resolution: not in the 256 table
    assert load_tool().report(tmp_path, 256) == 0
    out = capsys.readouterr().out
    assert "| 1 | 0.70 | 0.70 | 0.40 | 0.70 |" in out
    assert "| 2 | 0.90 | 0.80 | 0.60 | 0.90 |" in out
    assert "| 3 |" not in out and "(2 rounds" in out
    assert "| **median** | **0.80** | **0.75** | **0.50** | **0.80** |" in out
    assert "goal met: CPU s/step, peak RSS, start to first step; not met: none" in out
    assert load_tool().report(tmp_path, 256, since=2) == 0
    assert "| 1 |" not in capsys.readouterr().out


def test_a_folder_that_is_not_a_peers_folder_is_refused(tmp_path):
    done = subprocess.run([sys.executable, str(TOOL), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "not a peers folder" in done.stderr and str(tmp_path) in done.stderr
