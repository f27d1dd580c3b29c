"""Evaluation: A1111-style checkpoint grids, seed batches, the consistency score, keep/archive."""

from .grid import GridResult, GridSpec, build_grid, files_used, plan_cells
from .job import EvaluationJob, current_evaluation
from .keep import Checkpoint, KeepResult, RunFiles, checkpoint_info, keep_checkpoint, run_files, run_files_of
from .lora_names import LoraIndex, resolve_lora
from .prompts import EvaluationError, parse_prompt
from .render import GenerationSettings, Renderer
from .run import ScoreSpec, StopScoring, score_run
from .seed_batch import SeedBatchResult, SeedBatchSpec, seed_batch

__all__ = ["GenerationSettings", "GridResult", "GridSpec", "Renderer", "SeedBatchResult", "SeedBatchSpec",
           "build_grid", "files_used", "plan_cells", "seed_batch", "EvaluationJob", "current_evaluation", "Checkpoint",
           "KeepResult", "RunFiles", "checkpoint_info", "keep_checkpoint", "run_files", "run_files_of",
           "EvaluationError", "LoraIndex", "parse_prompt", "resolve_lora", "ScoreSpec", "StopScoring", "score_run"]
