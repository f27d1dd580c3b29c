"""CharLoRA's training speed and memory side by side with Kohya's sd-scripts, in alternating rounds.

    tools/compare_kohya.py PEERS_DIR [--rounds 3] [--resolution 256] [--steps 12] [--also-diffusers]
    tools/compare_kohya.py PEERS_DIR --resolution 256 --report-only [--since-round N]   # from runs already made

PEERS_DIR is set up as the peers harness's README says (sd-scripts 48d368fa and diffusers' LoRA example in
their own virtualenvs, an SD 1.5-shaped model with random weights, the dataset, its `tools/`); this script
runs its `tools/run_one.sh` for each tool of each round (the order reversed every other round, so that
neither tool always runs on a warmer machine) and prints, per round and as medians, CharLoRA / Kohya for:
CPU seconds per step (of the process tree, measured from outside), peak RSS of the tree, and time from
spawn to the first step done. The goal (issue 16) is printed beside them.

Trust CPU seconds per step on a shared machine: wall time per step varies 1.5x there for the same command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

METRICS = {  # measure.py's key: (label, goal for CharLoRA / Kohya)
    "median_cpu_s_per_step": ("CPU s/step", 0.8),
    "peak_tree_rss_gib_sampled": ("peak RSS", 0.75),
    "start_to_first_step_done_s": ("start to first step", 0.5),
    "median_s_per_step": ("wall s/step", None),
}


def results(peers: Path, resolution: int) -> dict[int, dict[str, dict]]:
    """{round: {tool: measure.py's JSON}} of the runs at `resolution`."""
    rounds: dict[int, dict[str, dict]] = {}
    for path in sorted((peers / "results").glob(f"r*_{resolution}_*.json")):
        match = re.fullmatch(rf"r(\d+)_{resolution}_(.+)\.json", path.name)
        if match:
            rounds.setdefault(int(match.group(1)), {})[match.group(2)] = json.loads(path.read_text())
    return rounds


def run_rounds(peers: Path, rounds: int, resolution: int, steps: int, tools: list[str]) -> None:
    first = max(results(peers, resolution), default=0) + 1
    env = dict(os.environ, PEERS_DIR=str(peers))
    for number in range(first, first + rounds):
        order = tools if (number - first) % 2 == 0 else tools[::-1]
        for tool in order:
            print(f"round {number}: {tool} at {resolution} px, {steps} steps ...", flush=True)
            done = subprocess.run([str(peers / "tools" / "run_one.sh"), tool, f"r{number}_{resolution}_{tool}",
                                   str(resolution), str(steps)], env=env, capture_output=True, text=True)
            tail = (done.stdout + done.stderr).strip().splitlines()[-2:]
            print("    " + "\n    ".join(tail), flush=True)


def ratio(ours: dict, theirs: dict, key: str) -> float | None:
    a, b = ours.get(key), theirs.get(key)
    return a / b if a and b else None


def report(peers: Path, resolution: int, peer: str = "kohya", since: int = 1) -> int:
    rounds = {n: tools for n, tools in results(peers, resolution).items()
              if n >= since and tools.get("charlora", {}).get("rc") == 0 and tools.get(peer, {}).get("rc") == 0}
    if not rounds:
        print(f"no round at {resolution} px with both charlora and {peer} finished in {peers / 'results'}")
        return 1
    keys = list(METRICS)
    print(f"\nCharLoRA / {peer} at {resolution} px ({len(rounds)} rounds; < 1 is better for CharLoRA)\n")
    print("| round | " + " | ".join(METRICS[k][0] for k in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    per_key: dict[str, list[float]] = {k: [] for k in keys}
    for number, tools in sorted(rounds.items()):
        values = [ratio(tools["charlora"], tools[peer], k) for k in keys]
        for k, v in zip(keys, values):
            if v is not None:
                per_key[k].append(v)
        print(f"| {number} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in values) + " |")
    medians = {k: statistics.median(v) if v else None for k, v in per_key.items()}
    print("| **median** | " + " | ".join("-" if medians[k] is None else f"**{medians[k]:.2f}**" for k in keys) + " |")
    goal = [f"{METRICS[k][0]} <= {METRICS[k][1]}" for k in keys if METRICS[k][1]]
    print("| goal | " + " | ".join("-" if METRICS[k][1] is None else f"<= {METRICS[k][1]}" for k in keys) + " |")
    print("\nAbsolute (median over rounds):")
    for tool in ("charlora", peer):
        parts = []
        for k in keys:
            xs = [tools[tool][k] for tools in rounds.values() if tools[tool].get(k)]
            parts.append(f"{METRICS[k][0]} {statistics.median(xs):.2f}" if xs else f"{METRICS[k][0]} -")
        print(f"- {tool}: " + "; ".join(parts) + " (RSS in GiB, times in s)")
    met = [k for k in keys if METRICS[k][1] and medians[k] is not None and medians[k] <= METRICS[k][1]]
    print(f"\ngoal met: {', '.join(METRICS[k][0] for k in met) or 'none'}; "
          f"not met: {', '.join(METRICS[k][0] for k in keys if METRICS[k][1] and k not in met) or 'none'} "
          f"(goal: {'; '.join(goal)})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("peers", type=Path, help="the peers folder (its README: set up once, ~15 min)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=256, choices=(256, 512))
    parser.add_argument("--steps", type=int, default=12, help="training steps per run (the first 2 not timed)")
    parser.add_argument("--also-diffusers", action="store_true", help="run diffusers' LoRA example in each round too")
    parser.add_argument("--report-only", action="store_true", help="print the table from the runs already made")
    parser.add_argument("--since-round", type=int, default=None,
                        help="report only rounds from this number on (default: the rounds just run, or all)")
    args = parser.parse_args()
    peers = args.peers.absolute()
    if not (peers / "tools" / "run_one.sh").is_file():
        print(f"{peers} is not a peers folder (no tools/run_one.sh): set it up as its README says", file=sys.stderr)
        return 2
    since = args.since_round or 1
    if not args.report_only:
        tools = ["kohya", "charlora"] + (["diffusers"] if args.also_diffusers else [])
        since = args.since_round or max(results(peers, args.resolution), default=0) + 1
        run_rounds(peers, args.rounds, args.resolution, args.steps, tools)
    code = report(peers, args.resolution, since=since)
    if args.also_diffusers:
        report(peers, args.resolution, "diffusers", since=since)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
