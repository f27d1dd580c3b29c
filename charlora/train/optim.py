"""Optimizers by Kohya's names, built as sd-scripts' `get_optimizer` builds them.

`optimizer_args` is Kohya's "key=value key=value" text ("weight_decay=0.01 betas=0.9,0.99").
As in sd-scripts, the optimizer's default lr is `learning_rate`; each param group carries its own
lr (UNet, text encoder).

Kohya's defaults kept on purpose:
- SGDNesterov gets momentum=0.9 unless given.
- Adafactor gets relative_step=True unless given (transformers' other defaults otherwise). With
  relative_step, Adafactor picks its own step size: the learning rates are dropped and the lr
  scheduler is replaced by the "adafactor" one (see schedule.py). Most Kohya presets pass
  "scale_parameter=False relative_step=False warmup_init=False" to use the configured lr instead.
- Prodigy: a warning when lr <= 0.1 (it expects about 1.0). Groups with different non-zero lrs
  are refused here: prodigyopt >= 1.1 raises at the first step (sd-scripts only warns).
"""

from __future__ import annotations

import ast
import inspect
import re

import torch

from ..errors import CharLoRAError

OPTIMIZERS = ("AdamW", "AdamW8bit", "Lion", "Lion8bit", "SGDNesterov", "Adafactor", "Prodigy")
_BY_LOWER = {name.lower(): name for name in OPTIMIZERS}
# When bitsandbytes cannot run, `optimizer_fallback` swaps in the 32-bit form of the same algorithm.
_FALLBACK = {"AdamW8bit": "AdamW", "Lion8bit": "Lion"}
_BARE_WORD = re.compile(r"[A-Za-z_][\w.\-]*")


def parse_kwargs(text, what="optimizer_args") -> dict:
    """Parse Kohya's "key=value key=value" text into a dict.

    Values are Python literals (`0.01`, `True`, `0.9,0.99` -> a tuple, `'text'`); true/false/none in
    any case are accepted too; a bare word (`max`, `torch.float32`) stays a string.
    """
    kwargs = {}
    if text is None:
        return kwargs
    # Kohya's GUI drops double quotes and splits on whitespace: values cannot contain spaces.
    for token in str(text).replace('"', "").split():
        key, sep, raw = token.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise CharLoRAError(
                f"{what}: {token!r} is not key=value; write e.g. \"weight_decay=0.01 betas=0.9,0.99\" "
                "(no spaces around '=' or inside a value)"
            )
        if raw == "":
            raise CharLoRAError(f"{what}: {key} has no value; write {key}=VALUE or leave {key} out")
        if raw.lower() in ("true", "false", "none"):
            kwargs[key] = {"true": True, "false": False, "none": None}[raw.lower()]
            continue
        try:
            kwargs[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            if not _BARE_WORD.fullmatch(raw):
                raise CharLoRAError(
                    f"{what}: the value of {key} ({raw!r}) cannot be read; use a number, True/False, "
                    "a comma-separated tuple like 0.9,0.99, or a quoted string"
                ) from None
            kwargs[key] = raw
    return kwargs


def _describe(cls, kwargs: dict) -> str:
    """Kohya's ss_optimizer text: "module.Class(key=value,...)"."""
    name = f"{cls.__module__}.{cls.__name__}"
    args = ",".join(f"{k}={v}" for k, v in kwargs.items())
    return f"{name}({args})" if args else name


def _construct(name, cls, param_groups, lr, kwargs, extra=None):
    try:
        return cls(param_groups, lr=lr, **kwargs, **(extra or {}))
    except (TypeError, ValueError) as err:
        raise CharLoRAError(
            f"optimizer {name} refused its settings (optimizer_args {kwargs}): {err}; "
            "check optimizer_args for names and values this optimizer accepts"
        ) from None


def _bitsandbytes_class(name: str):
    """The bitsandbytes optimizer class `name` (ImportError or AttributeError when unavailable)."""
    import bitsandbytes as bnb

    return getattr(bnb.optim, name)


def _probe_8bit(cls, device) -> None:
    # 4,096 elements: smaller tensors keep 32-bit state, which would not test the 8-bit kernels.
    probe = torch.nn.Parameter(torch.zeros(4096, device=device))
    probe.grad = torch.ones_like(probe)
    cls([probe], lr=1e-3).step()


def _accepted_kwargs(cls, kwargs: dict) -> tuple[dict, list]:
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return dict(kwargs), []
    kept = {k: v for k, v in kwargs.items() if k in params}
    return kept, [k for k in kwargs if k not in kept]


def build_optimizer(name, param_groups, values, device):
    """Build the optimizer `name` (Kohya's name) over `param_groups` (dicts with "params" and "lr").

    Returns (optimizer, description, warnings): description is Kohya's ss_optimizer text, warnings
    are lines the user must see (a fallback, ignored learning rates).
    """
    canonical = _BY_LOWER.get(str(name).lower())
    if canonical is None:
        raise CharLoRAError(f"optimizer {name!r} is not supported; choose one of: {', '.join(OPTIMIZERS)}")
    name = canonical
    kwargs = parse_kwargs(values["optimizer_args"], "optimizer_args")
    lr = values["learning_rate"]
    groups = [dict(group) for group in param_groups]  # never change the caller's dicts
    warnings: list[str] = []
    on_cuda = torch.device(device).type == "cuda"

    if name in _FALLBACK:
        try:
            cls = _bitsandbytes_class(name)
            _probe_8bit(cls, device)
        except (ImportError, RuntimeError, OSError, AttributeError) as err:
            fallback = _FALLBACK[name]
            text = str(err).strip()
            reason = f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
            if not values["optimizer_fallback"]:
                raise CharLoRAError(
                    f"optimizer {name} needs bitsandbytes, which cannot run it on {device} ({reason}). "
                    f"Choose optimizer {fallback}, or set optimizer_fallback to true to use {fallback} "
                    "instead automatically."
                ) from None
            kwargs, dropped = _accepted_kwargs(_fallback_class(fallback), kwargs)
            note = f"; optimizer_args {', '.join(dropped)} dropped (not {fallback} arguments)" if dropped else ""
            warnings.append(
                f"optimizer {name} cannot run here ({reason}); using {fallback} (32-bit) instead "
                f"because optimizer_fallback is true{note}. It needs more memory."
            )
            name = fallback
        else:
            optimizer = _construct(name, cls, groups, lr, kwargs)
            return optimizer, _describe(cls, kwargs), warnings

    if name == "AdamW":
        cls = torch.optim.AdamW
        # The fused kernel is faster on CUDA; it is not part of Kohya's ss_optimizer text.
        extra = {"fused": True} if on_cuda and "fused" not in kwargs else {}
        optimizer = _construct(name, cls, groups, lr, kwargs, extra)

    elif name == "Lion":
        import lion_pytorch

        cls = lion_pytorch.Lion
        optimizer = _construct(name, cls, groups, lr, kwargs)

    elif name == "SGDNesterov":
        cls = torch.optim.SGD
        kwargs.setdefault("momentum", 0.9)  # Nesterov needs momentum; sd-scripts sets 0.9
        kwargs.pop("nesterov", None)
        optimizer = _construct(name, cls, groups, lr, kwargs, {"nesterov": True})

    elif name == "Prodigy":
        import prodigyopt

        cls = prodigyopt.Prodigy
        group_lrs = [group.get("lr", lr) for group in groups]
        used_lrs = sorted({group_lr for group_lr in group_lrs if group_lr})
        if len(used_lrs) > 1:
            # prodigyopt >= 1.1 raises at the first step; sd-scripts only warned (older Prodigy used the first).
            raise CharLoRAError(
                f"Prodigy needs one learning rate for everything it trains, got {used_lrs} (unet_lr, "
                "text_encoder_lr); set them equal (about 1.0 for Prodigy), or one of them to 0 to train only the other"
            )
        if used_lrs and used_lrs[0] <= 0.1:
            warnings.append(f"Prodigy adapts its own step size and expects a learning rate around 1.0; "
                            f"it got {used_lrs[0]}, which will train very slowly")
        optimizer = _construct(name, cls, groups, lr, kwargs)

    elif name == "Adafactor":
        from transformers.optimization import Adafactor

        cls = Adafactor
        kwargs.setdefault("relative_step", True)  # sd-scripts' default
        if not kwargs["relative_step"] and kwargs.get("warmup_init", False):
            kwargs["relative_step"] = True  # warmup_init needs it; sd-scripts switches it on too
            warnings.append("Adafactor: warmup_init=True needs relative_step, so relative_step is True")
        if kwargs["relative_step"]:
            had_lr = any("lr" in group for group in groups)
            for group in groups:
                group.pop("lr", None)
            lr = None
            warnings.append(
                "Adafactor with relative_step=True chooses its own step size: learning_rate"
                + (", unet_lr and text_encoder_lr are" if had_lr else " is")
                + " not used and lr_scheduler is replaced by 'adafactor'. Add "
                "\"scale_parameter=False relative_step=False warmup_init=False\" to optimizer_args to "
                "use your learning rates"
            )
        optimizer = _construct(name, cls, groups, lr, kwargs)

    return optimizer, _describe(cls, kwargs), warnings


def _fallback_class(name):
    if name == "AdamW":
        return torch.optim.AdamW
    import lion_pytorch

    return lion_pytorch.Lion
