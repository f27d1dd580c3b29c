"""Evaluation: A1111-style checkpoint grids, seed batches, the consistency score, keep/archive."""

from .grid import (GenerationSettings, GridResult, GridSpec, Renderer, SeedBatchResult, SeedBatchSpec, build_grid,
                   files_used, plan_cells, seed_batch)
from .job import EvaluationJob, current_evaluation
from .keep import Checkpoint, KeepResult, RunFiles, checkpoint_info, keep_checkpoint, run_files, run_files_of
from .prompts import EvaluationError, LoraIndex, parse_prompt, resolve_lora
from .run import ScoreSpec, StopScoring, score_run

__all__ = ["GenerationSettings", "GridResult", "GridSpec", "Renderer", "SeedBatchResult", "SeedBatchSpec",
           "build_grid", "files_used", "plan_cells", "seed_batch", "EvaluationJob", "current_evaluation", "Checkpoint",
           "KeepResult", "RunFiles", "checkpoint_info", "keep_checkpoint", "run_files", "run_files_of",
           "EvaluationError", "LoraIndex", "parse_prompt", "resolve_lora", "ScoreSpec", "StopScoring", "score_run"]
