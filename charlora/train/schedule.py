"""Learning-rate schedules by Kohya's names, as sd-scripts' `get_scheduler_fix` builds them.

The curves are diffusers' (`diffusers.optimization`), stepped once per optimizer step. With W
warm-up steps and T total steps, the factor applied to each group's lr at step s is:

- every curve but constant: s / W during the warm-up (s < W)
- constant: 1, and the warm-up is ignored (diffusers' `get_constant_schedule` has none;
  sd-scripts refuses a warm-up here, `scheduler_notes` reports it)
- constant_with_warmup: 1 after the warm-up
- linear: (T - s) / (T - W), down to 0
- cosine: 0.5 * (1 + cos(pi * p)), p = (s - W) / (T - W)  (half a cosine, diffusers' num_cycles 0.5)
- cosine_with_restarts: 0.5 * (1 + cos(pi * ((n * p) % 1))), n = lr_scheduler_num_cycles (1 when empty)
- polynomial: ((lr0 - 1e-7) * (1 - p) ** power + 1e-7) / lr0, lr0 = the optimizer's default lr
  (learning_rate), power = lr_scheduler_power (1 when empty)
- adafactor: transformers' AdafactorSchedule, which only reports the step size Adafactor picks
  itself; it needs Adafactor with relative_step=True. sd-scripts switches to it whatever
  lr_scheduler says when Adafactor runs with relative_step=True, and so does `build_scheduler`.

`lr_scheduler_args` ("key=value ...") go to the diffusers function as keyword arguments, as in
sd-scripts (e.g. "num_cycles=1.0" makes cosine a full cosine).
"""

from __future__ import annotations

from ..errors import CharLoRAError
from ..params import effective
from .optim import parse_kwargs

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial", "adafactor")


def warmup_steps(values: dict, total_steps: int) -> int:
    """Warm-up length in steps: lr_warmup_steps when above 0, else Kohya GUI's lr_warmup percent of the steps."""
    if values["lr_warmup_steps"] > 0:
        return int(values["lr_warmup_steps"])
    return round(float(values["lr_warmup"]) * total_steps / 100)


def _adafactor_relative_step(optimizer) -> bool:
    return type(optimizer).__name__ == "Adafactor" and bool(optimizer.defaults.get("relative_step"))


def scheduler_notes(values: dict, total_steps: int) -> list[str]:
    """Lines for the user where the schedule does not do what the settings might suggest."""
    notes = []
    name = values["lr_scheduler"]
    warmup = warmup_steps(values, total_steps)
    if warmup > 0 and name in ("constant", "adafactor"):
        notes.append(
            f"lr_scheduler {name} has no warm-up: the {warmup} warm-up steps (lr_warmup/lr_warmup_steps) are "
            "ignored (sd-scripts refuses this combination); use constant_with_warmup for a warm-up"
        )
    if warmup >= total_steps > 0 and name not in ("constant", "adafactor"):
        notes.append(f"the warm-up ({warmup} steps) is as long as the whole run ({total_steps} steps): "
                     "the learning rate never reaches its set value")
    return notes


def build_scheduler(optimizer, values: dict, total_steps: int):
    """The LambdaLR for values["lr_scheduler"] over `total_steps` optimizer steps."""
    from diffusers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType

    name = values["lr_scheduler"]
    if name not in SCHEDULERS:
        raise CharLoRAError(f"lr_scheduler {name!r} is not supported; choose one of: {', '.join(SCHEDULERS)}")
    kwargs = parse_kwargs(values["lr_scheduler_args"], "lr_scheduler_args")

    if name == "adafactor" or _adafactor_relative_step(optimizer):
        if type(optimizer).__name__ != "Adafactor":
            raise CharLoRAError(
                f"lr_scheduler adafactor works only with optimizer Adafactor (got {type(optimizer).__name__}); "
                "choose another lr_scheduler"
            )
        if not _adafactor_relative_step(optimizer):
            # AdafactorSchedule would set every lr to learning_rate squared; sd-scripts fails here too.
            raise CharLoRAError(
                "lr_scheduler adafactor needs Adafactor to choose its own step size (relative_step=True in "
                "optimizer_args); with relative_step=False use constant_with_warmup or another lr_scheduler"
            )
        from transformers.optimization import AdafactorSchedule

        return AdafactorSchedule(optimizer, initial_lr=float(values["learning_rate"]))

    schedule_func = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)]
    warmup = warmup_steps(values, total_steps)
    if name == "constant":
        args = {}  # diffusers' constant schedule takes no warm-up
    elif name == "constant_with_warmup":
        args = {"num_warmup_steps": warmup}
    else:
        args = {"num_warmup_steps": warmup, "num_training_steps": total_steps}
        if name == "cosine_with_restarts":
            args["num_cycles"] = effective(values, "lr_scheduler_num_cycles")
        elif name == "polynomial":
            args["power"] = effective(values, "lr_scheduler_power")
    args.update(kwargs)  # lr_scheduler_args win, e.g. lr_end for polynomial
    try:
        return schedule_func(optimizer, **args)
    except (TypeError, ValueError, ZeroDivisionError) as err:
        raise CharLoRAError(
            f"lr_scheduler {name} refused its settings ({args}): {err}; check lr_scheduler_args, "
            "lr_scheduler_num_cycles, lr_scheduler_power and the learning rate"
        ) from None
