"""One image of an evaluation: how it is generated (GenerationSettings, checked once), what it is (Cell),
and the Renderer that makes it: the base model loaded once, each LoRA file once, merged into the weights
for its cells as A1111 does (a cell without LoRA gives the base model's image bit for bit).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CharLoRAError
from ..models import family_of
from ..models.loading import load_base_model
from ..params.evaluation import EVALUATION
from ..train.sampling import SamplePrompt, generate_samples
from .lora_merge import MergedLoRAs
from .prompts import EvaluationError


@dataclass(kw_only=True)
class GenerationSettings:
    """How each image is generated (shared by grids, seed batches and scoring); defaults: params.evaluation."""

    negative: str = EVALUATION["negative"].default
    steps: int = EVALUATION["steps"].default
    cfg: float = EVALUATION["cfg"].default
    sampler: str = EVALUATION["sampler"].default  # Kohya's or A1111's name (train.sampling.SAMPLER_CHOICES)
    width: int = EVALUATION["width"].default
    height: int = EVALUATION["height"].default
    clip_skip: int = EVALUATION["clip_skip"].default


MAX_CELLS = 1000  # hours of rendering even on a GPU: a larger request is a typo, refused before any work


def check_settings(settings: GenerationSettings) -> None:
    """Refuse generation settings that cannot make a useful image, naming the value, before any work."""
    steps, cfg = EVALUATION["steps"], EVALUATION["cfg"]
    if not isinstance(settings.steps, int) or not steps.min <= settings.steps <= steps.max:
        raise EvaluationError(f"steps {settings.steps!r}: use {steps.min:g} to {steps.max:g} (20-30 is usual)")
    if not isinstance(settings.cfg, (int, float)) or not math.isfinite(settings.cfg) \
            or not cfg.min <= settings.cfg <= cfg.max:
        raise EvaluationError(f"CFG {settings.cfg!r}: use a number from {cfg.min:g} to {cfg.max:g} (7 is usual)")
    for name in ("width", "height"):
        value, side = getattr(settings, name), EVALUATION[name]
        if not isinstance(value, int) or not side.min <= value <= side.max:
            raise EvaluationError(f"{name} {value!r}: use {side.min:g} to {side.max:g} pixels (SD 1.5 is made for 512, "
                                  "SDXL for 1024)")


def output_folder(path) -> Path:
    out = Path(path).absolute()
    if out.exists() and not out.is_dir():
        raise EvaluationError(f"output folder {out} is a file; choose a folder (it is created if needed)")
    return out


@dataclass
class Cell:
    prompt: str  # what is encoded: comments and <lora:...> tags removed
    negative: str  # what is encoded: comments removed (a <lora:...> tag there stays as text, as in A1111)
    cfg: float
    seed: int
    steps: int
    sampler: str
    loras: list  # [(path, te_weight, unet_weight)]
    labels: tuple  # (x label, y label, z label)
    text: str = ""  # the prompt for the infotext: comments removed, <lora:...> tags where the user typed them
    lora_names: list = field(default_factory=list)  # the infotext's name of each LoRA (one A1111 finds it by)


class Renderer:
    """A base model with LoRA files loaded on demand, once each; renders one cell at a time."""

    def __init__(self, base_model: str, device: str | None = None, clip_skip: int = EVALUATION["clip_skip"].default):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.pipe = load_base_model(base_model, dtype=dtype, device=self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.clip_skip = clip_skip
        self.adapters: dict[tuple, str] = {}
        self.merged = MergedLoRAs(self.pipe)

    def _adapter(self, path: Path) -> str:
        try:
            stat = path.stat()
        except OSError as exc:  # moved (e.g. archived by Keep) after the grid was planned
            raise CharLoRAError(f"LoRA file {path} cannot be read ({exc.strerror or exc}): was it moved or "
                                "archived? Choose it again") from None
        key = (path.resolve(), stat.st_mtime_ns, stat.st_size)  # a retrained file of the same name is new
        if key not in self.adapters:
            _check_finite(path)
            _check_family(path, family_of(self.pipe))
            self.merged.restore()  # peft adds the new adapter to unmerged layers
            name = f"lora{len(self.adapters)}"  # peft adapter names must be plain identifiers
            try:
                with warnings.catch_warnings():  # peft warns that a second adapter is a second adapter
                    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                    self.pipe.load_lora_weights(str(path), adapter_name=name)
            except Exception as exc:
                raise CharLoRAError(f"{path} could not be loaded as a LoRA ({exc})") from exc
            self.adapters[key] = name
        return self.adapters[key]

    def render(self, cell: Cell, width: int, height: int):
        if cell.loras:
            names = [self._adapter(Path(p)) for p, _, _ in cell.loras]
            key = tuple((name, t, u) for name, (_, t, u) in zip(names, cell.loras))
            if self.merged.merged != key:
                self.merged.restore()
                self.pipe.enable_lora()
                encoders = family_of(self.pipe).text_encoders  # A1111's te= weight applies to both of SDXL's
                self.pipe.set_adapters(names, adapter_weights=[{"unet": u, **{name: t for name in encoders}}
                                                               for _, t, u in cell.loras])
                self.merged.merge(key, names)  # A1111's way: merged into the weights, a step costs no more
        elif self.adapters:
            self.merged.restore()
            self.pipe.disable_lora()  # the base model, exactly
        sample = SamplePrompt(cell.prompt, cell.negative, width, height, cell.steps, cell.cfg, cell.seed,
                              sampler=cell.sampler)
        return generate_samples(self.pipe, [sample], cell.sampler, self.device, clip_skip=self.clip_skip)[0]


def _check_family(path: Path, family) -> None:
    """An SD 1.5 LoRA on an SDXL base (or the other way round) loads partly or fails obscurely: name it."""
    from ..lora.kohya_file import LoRAFileError, lora_family, read_header

    try:
        found = lora_family(read_header(path))
    except LoRAFileError:
        return  # not a Kohya file: load_lora_weights says what is wrong
    if found != family.arch:
        names = {"sd1": "SD 1.5", "sdxl": "SDXL"}
        raise CharLoRAError(f"{path.name} is an {names[found]} LoRA, but the base model is {family.name}: choose "
                            f"the {names[found]} base model it was trained on, or a LoRA trained on {family.name}")


def _check_finite(path: Path) -> None:
    """A LoRA holding NaN or inf (a diverged run) renders black images: name the file instead."""
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt")
    except Exception:
        return  # not a safetensors file: load_lora_weights below says what is wrong
    with handle:
        for key in handle.keys():
            if not bool(torch.isfinite(handle.get_tensor(key)).all()):
                raise CharLoRAError(f"{path.name} holds NaN or infinite values in {key} (its images would come "
                                    "out black): the run diverged at or before this file; use an earlier file, "
                                    "or train again with a lower learning rate")


def how_far(result) -> str:
    return f"stopped after {result.done} of {result.total} images" if result.stopped else f"{result.total} images"


_SHARED: dict = {}


def shared_renderer(base_model: str, clip_skip: int = EVALUATION["clip_skip"].default) -> Renderer:
    """One renderer per process for the GUI: the base model stays loaded between grids, seed batches and
    scores, and is replaced (its memory freed) when another base model is asked for."""
    key = (base_model, clip_skip)
    if _SHARED.get("key") != key:
        _SHARED.clear()
        _SHARED.update(key=key, renderer=Renderer(base_model, clip_skip=clip_skip))
    return _SHARED["renderer"]
