"""The training engine: one loop for the CLI, the GUI's thread and `accelerate launch`."""

from .command import training_command
from .events import (Emitter, Event, Message, RunFinished, RunStarted, SamplesSaved, Saved, Step, StopRequest)
from .job import JobSnapshot, TrainingJob, current_job
from .events import RunResult
from .trainer import is_running, train

__all__ = ["training_command", "Emitter", "Event", "Message", "RunFinished", "RunStarted", "SamplesSaved", "Saved",
           "Step", "StopRequest", "RunResult", "is_running", "train", "JobSnapshot", "TrainingJob", "current_job"]
