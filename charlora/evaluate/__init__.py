"""Evaluation: A1111-style checkpoint grids, seed batches, the consistency score, keep/archive."""

from .grid import GridResult, GridSpec, Renderer, build_grid, plan_cells, seed_batch
from .job import EvaluationJob, current_evaluation
from .keep import keep_checkpoint, run_files_of
from .prompts import EvaluationError, LoraIndex, parse_prompt
from .run import ScoreSpec, StopScoring, score_run

__all__ = ["GridResult", "GridSpec", "Renderer", "build_grid", "plan_cells", "seed_batch", "EvaluationJob",
           "current_evaluation", "keep_checkpoint", "run_files_of", "EvaluationError", "LoraIndex", "parse_prompt",
           "ScoreSpec", "StopScoring", "score_run"]
