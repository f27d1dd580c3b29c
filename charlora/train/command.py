"""The command line that runs a config headless, as Kohya's "Print training command" shows it."""

from __future__ import annotations

import os
import shlex
import subprocess


def _join(args: list[str]) -> str:
    return subprocess.list2cmdline(args) if os.name == "nt" else shlex.join(args)


def training_command(values: dict, config_path: str) -> str:
    """`python -m charlora train --config FILE`, or `accelerate launch ...` for several processes."""
    if values["num_processes"] > 1:
        args = ["accelerate", "launch", "--num_processes", str(values["num_processes"]),
                "--num_cpu_threads_per_process", str(values["num_cpu_threads_per_process"])]
        args.append("--multi_gpu")
        if values["gpu_ids"]:
            args += ["--gpu_ids", values["gpu_ids"]]
        args += ["-m", "charlora", "train", "--config", config_path]
    else:
        args = ["python", "-m", "charlora", "train", "--config", config_path]
    return _join(args)
