"""Sample images during training, with Kohya's prompt syntax, sampler names and file names.

Sources in sd-scripts (library/train_util.py): `line_to_prompt_dict`, `sample_images_common`,
`sample_image_inference` and `get_my_scheduler`.

A prompt line: `wwaa girl, smiling --n blurry, lowres --w 512 --h 768 --s 28 --l 7.5 --d 1234`
(options split on " --": n negative prompt, w/h size rounded down to a multiple of 8 (at least
64), s steps (1-1000), l CFG scale, d seed, ss sampler for this prompt). Kohya's defaults: 512 x 512,
30 steps, CFG 7.5, a random seed.

Samplers are built like sd-scripts builds them: fresh, from SD's noise schedule (timesteps, betas,
prediction type) and the class defaults otherwise, not from the model's scheduler config.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass, field

import torch

from ..errors import CharLoRAError
from ..models import family_of
from .text import CHUNK, encode_captions

# A sample prompt line's options when it does not give them: sd-scripts' (not the Evaluation tab's settings)
KOHYA_DEFAULTS = {"width": 512, "height": 512, "steps": 30, "cfg_scale": 7.5, "seed": None, "negative_prompt": None}

# Kohya's sampler name -> (diffusers scheduler class, extra config), as get_my_scheduler maps them.
SAMPLERS = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "k_lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "k_euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "k_euler_a": ("EulerAncestralDiscreteScheduler", {}),
    # diffusers >= 0.30 refuses the first-order "dpmsolver" with its default final sigma of zero.
    "dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsingle": ("DPMSolverSinglestepScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "k_dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "k_dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
}
# AUTOMATIC1111 1.10's samplers (modules/sd_samplers_kdiffusion.py, sd_samplers_timesteps.py) -> the diffusers
# scheduler that is the same sampler (diffusers' own table of A1111 equivalents), and the schedule A1111 1.10
# uses when "Schedule type" is Automatic (the sampler's `scheduler` option; None: the model's own sigmas, which
# is A1111's "Uniform"). A name with a schedule ("DPM++ 2M Karras", "Euler Exponential") picks it, as A1111's
# get_sampler_and_scheduler reads such names. DDIM, PLMS and UniPC work on timesteps and take no schedule.
A1111_SAMPLERS = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {}, None),
    "Euler": ("EulerDiscreteScheduler", {}, None),
    "LMS": ("LMSDiscreteScheduler", {}, None),
    "Heun": ("HeunDiscreteScheduler", {}, None),
    "DPM2": ("KDPM2DiscreteScheduler", {}, "Karras"),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}, "Karras"),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, "Karras"),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {}, "Karras"),  # needs torchsde, as diffusers says
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "Exponential"),
    "DDIM": ("DDIMScheduler", {}, None),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}, None),  # ldm's PLMS: no Runge-Kutta warm-up
    # A1111's UniPC options: variant bh1, order 3, lower order final, time_uniform skip type (linspace), ending
    # at t = 1/N, not at sigma 0 (where bh1 divides by zero)
    "UniPC": ("UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh1", "lower_order_final": True,
                                          "final_sigmas_type": "sigma_min"}, None),
}
TIMESTEP_SAMPLERS = ("DDIM", "PLMS", "UniPC")  # A1111 ignores the schedule type for these
# A1111's schedule labels -> the diffusers option giving the same sigmas (Karras rho 7 and exponential, both
# between the model's sigma_min and sigma_max, as A1111 1.6+ uses them).
SCHEDULES = {"Uniform": {}, "Karras": {"use_karras_sigmas": True}, "Exponential": {"use_exponential_sigmas": True}}
# Schedules diffusers offers per class (EulerAncestralDiscreteScheduler has no sigma options).
_SCHEDULABLE = {"EulerDiscreteScheduler", "LMSDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
                "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSDEScheduler"}
# Kohya's name -> A1111's, where CharLoRA builds the very same scheduler for both (for the infotext).
KOHYA_TO_A1111 = {"euler_a": "Euler a", "k_euler_a": "Euler a", "euler": "Euler", "k_euler": "Euler", "lms": "LMS",
                  "k_lms": "LMS", "heun": "Heun", "dpm_2": "DPM2 Uniform", "k_dpm_2": "DPM2 Uniform",
                  "dpm_2_a": "DPM2 a Uniform", "k_dpm_2_a": "DPM2 a Uniform", "dpmsolver++": "DPM++ 2M Uniform",
                  "ddim": "DDIM"}


def _a1111_names() -> dict[str, tuple[str, str | None]]:
    """{accepted A1111 name: (sampler, schedule or None)}: every sampler alone, and each with every schedule
    diffusers can give it ("DPM++ 2M Karras", "Euler Uniform", ...)."""
    names = {}
    for sampler, (class_name, _, default) in A1111_SAMPLERS.items():
        names[sampler] = (sampler, default)
        if class_name in _SCHEDULABLE and sampler not in TIMESTEP_SAMPLERS:
            for schedule in SCHEDULES:
                names[f"{sampler} {schedule}"] = (sampler, schedule)
    return names


A1111_NAMES = _a1111_names()
# What a dropdown lists: Kohya's names, then A1111's samplers and the familiar "... Karras" names of A1111 < 1.9
# ("Euler", "DDIM", "LMS", "Heun" are Kohya's names in other case: the same scheduler, listed once, Kohya's way).
# Every name in A1111_NAMES is accepted, listed or not.
_LISTED = tuple(A1111_SAMPLERS) + ("LMS Karras", "DPM2 Karras", "DPM2 a Karras", "DPM++ 2M Karras", "DPM++ SDE Karras",
                                   "DPM++ 2M SDE Karras")
SAMPLER_CHOICES = tuple(SAMPLERS) + tuple(n for n in _LISTED if n.lower() not in SAMPLERS)
_BY_LOWER = {n.lower(): n for n in tuple(A1111_NAMES) + SAMPLER_CHOICES}  # Kohya's spelling wins a tie


def sampler_name(name: str, setting: str = "sampler") -> str:
    """The accepted spelling of a Kohya or A1111 sampler name, matched case-insensitively; `setting` names
    the option in the message when the name is not known."""
    found = _BY_LOWER.get(" ".join(str(name or "").split()).lower())
    if found is None:
        raise CharLoRAError(f"{setting} {name!r} is not known; choose one of: {', '.join(SAMPLER_CHOICES)} "
                            f"(or an A1111 sampler with a schedule type: Uniform, Karras or Exponential, "
                            f"e.g. 'DPM++ 2M Uniform')")
    return found


def _scheduler(name: str, setting: str = "sampler") -> tuple[str, dict]:
    """(diffusers class name, extra config) of a Kohya or A1111 sampler name."""
    name = sampler_name(name, setting)
    if name in SAMPLERS:
        return SAMPLERS[name]
    sampler, schedule = A1111_NAMES[name]
    class_name, extra = A1111_SAMPLERS[sampler][:2]
    return class_name, {**extra, **SCHEDULES.get(schedule, {})}


def infotext_sampler(name: str) -> dict:
    """The sampler as A1111 writes it in an infotext, so that pasting it into A1111 (1.10, and the versions
    before the Schedule type field) picks the same sampler and schedule: {"Sampler": "DPM++ 2M Karras"},
    {"Sampler": "Euler a"}, or {"Sampler": "DPM++ 2M", "Schedule type": "Uniform"} where 1.10's Automatic would
    not be uniform. A Kohya name with no A1111 twin (dpmsolver, pndm, ...) is written as it is."""
    try:
        canonical = sampler_name(name)
    except CharLoRAError:
        return {"Sampler": str(name)}
    canonical = KOHYA_TO_A1111.get(canonical, canonical)
    if canonical not in A1111_NAMES:
        return {"Sampler": canonical}
    sampler, schedule = A1111_NAMES[canonical]
    default = A1111_SAMPLERS[sampler][2]
    if schedule in (None, "Uniform") and default is None:
        return {"Sampler": sampler}
    if schedule == "Uniform":
        return {"Sampler": sampler, "Schedule type": "Uniform"}
    return {"Sampler": f"{sampler} {schedule}"}


# The parts of the model's scheduler config that sd-scripts also sets (to SD's values).
_NOISE_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")
PNDM_MIN_STEPS = 4  # PNDM's Runge-Kutta warm-up needs at least 4 inference steps (PLMS skips it)


@dataclass
class SamplePrompt:
    prompt: str
    negative_prompt: str | None = KOHYA_DEFAULTS["negative_prompt"]
    width: int = KOHYA_DEFAULTS["width"]
    height: int = KOHYA_DEFAULTS["height"]
    steps: int = KOHYA_DEFAULTS["steps"]
    cfg_scale: float = KOHYA_DEFAULTS["cfg_scale"]
    seed: int | None = KOHYA_DEFAULTS["seed"]
    sampler: str | None = None  # --ss: this prompt's sampler instead of sample_sampler
    warnings: list[str] = field(default_factory=list)  # options that were not understood


def _round_size(value: int) -> int:
    return max(64, value - value % 8)


def _sampler_name(value: str) -> str:
    name = value.strip()
    if name not in SAMPLERS:
        raise ValueError(name)  # sd-scripts would sample with DDIM; here it is reported and ignored
    return name


# (option pattern, SamplePrompt field, converter), in sd-scripts' order ("s" is tried before "ss").
_OPTIONS = (
    (r"w (\d+)", "width", lambda v: _round_size(int(v))),
    (r"h (\d+)", "height", lambda v: _round_size(int(v))),
    (r"d (\d+)", "seed", int),
    (r"s (\d+)", "steps", lambda v: max(1, min(1000, int(v)))),
    (r"l ([\d\.]+)", "cfg_scale", float),
    (r"n (.+)", "negative_prompt", str),
    (r"ss (.+)", "sampler", _sampler_name),
)


_OPTION_WANTS = {"w": "a width in pixels, e.g. --w 512", "h": "a height in pixels, e.g. --h 512",
                 "d": "a seed, a whole number, e.g. --d 1234", "s": "a number of steps, e.g. --s 28",
                 "l": "a CFG scale, e.g. --l 7.5"}


def parse_prompt_line(line: str, defaults: dict | None = None) -> SamplePrompt:
    """One prompt line in Kohya's syntax; options not understood are listed in `.warnings`."""
    settings = dict(KOHYA_DEFAULTS)
    settings.update(defaults or {})
    parts = line.strip().split(" --")
    sample = SamplePrompt(
        prompt=parts[0].strip(),
        negative_prompt=settings["negative_prompt"],
        width=_round_size(int(settings["width"])),
        height=_round_size(int(settings["height"])),
        steps=int(settings["steps"]),
        cfg_scale=float(settings["cfg_scale"]),
        seed=settings["seed"],
    )
    # sd-scripts also matches the prompt text itself against the options (a prompt starting "w 300"
    # would set the width); only the parts after " --" are options here.
    for part in parts[1:]:
        for pattern, name, convert in _OPTIONS:
            match = re.match(pattern, part, re.IGNORECASE)
            if match:
                try:
                    setattr(sample, name, convert(match.group(1)))
                except ValueError:
                    sample.warnings.append(f"sample prompt option --{part.strip()} has a bad value; ignored")
                break
        else:
            letter = part.strip().split(" ", 1)[0].lower()
            if letter in _OPTION_WANTS:  # a known option with a value it cannot use
                sample.warnings.append(f"sample prompt option --{part.strip()}: --{letter} takes "
                                       f"{_OPTION_WANTS[letter]}; ignored")
            else:
                sample.warnings.append(f"sample prompt option --{part.strip()} is not known; ignored "
                                       "(known: --n, --w, --h, --s, --l, --d, --ss)")
    opened, closed = sample.prompt.count("("), sample.prompt.count(")")
    if opened != closed:
        sample.warnings.append(f"sample prompt {sample.prompt!r} has {opened} '(' and {closed} ')': the prompt is "
                               "used as written, brackets included; balance them if you meant emphasis")
    return sample


def parse_prompts(text: str, defaults: dict | None = None) -> list[SamplePrompt]:
    """Every prompt of `sample_prompts`: one per line; empty lines and lines starting with # skipped."""
    prompts = []
    for line in (text or "").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        prompts.append(parse_prompt_line(line, defaults))
    return prompts


def make_sampler(name: str, scheduler_config):
    """A fresh diffusers scheduler for sampler `name` (Kohya's or A1111's), on the noise schedule of
    `scheduler_config`."""
    import diffusers

    class_name, extra = _scheduler(name, "sample_sampler")
    config = {key: scheduler_config[key] for key in _NOISE_SCHEDULE_KEYS if key in scheduler_config}
    try:
        with warnings.catch_warnings():
            # diffusers marks the first-order "dpmsolver" deprecated; it is still Kohya's sampler name.
            warnings.filterwarnings("ignore", category=FutureWarning)
            return getattr(diffusers, class_name).from_config(config, **extra)
    except ImportError as err:
        text = " ".join(str(err).split())
        package = re.search(r"requires the (\w+) library", text)
        package = package.group(1) if package else "scipy"
        raise CharLoRAError(
            f"sample_sampler {name} needs a package that is not installed ({text.split('. ')[0]}); "
            f"install it (pip install {package}) or choose another sample_sampler"
        ) from None


def _embeddings(pipe, prompt, negative, device, clip_skip, max_token_length) -> dict:
    """The pipe's prompt-embedding arguments, computed as in training (clip_skip, long captions; SDXL's
    two encoders and pooled output): diffusers' own clip_skip path expects a `text_model` level that
    transformers >= 5.6 no longer builds."""
    hidden, pooled = encode_captions(pipe, [prompt, negative], {"clip_skip": clip_skip,
                                                                "max_token_length": max_token_length}, device)
    embeds = {"prompt_embeds": hidden[0:1], "negative_prompt_embeds": hidden[1:2]}
    if pooled is not None:
        embeds.update(pooled_prompt_embeds=pooled[0:1], negative_pooled_prompt_embeds=pooled[1:2])
    return embeds


def generate_samples(pipe, prompts, sampler, device, clip_skip=None, max_token_length=CHUNK, v_prediction=False):
    """One image per prompt with `pipe` (an SD 1.5 or SDXL pipeline already holding the LoRA).

    Each prompt's seed seeds its own CPU generator (a prompt without --d gets a random seed); the
    pipe's scheduler and the global torch RNG state are restored afterwards, so sampling does not
    change the training run. The pipe's modules must already be on `device`. `v_prediction`: the model
    predicts velocity (v_parameterization), whatever its scheduler config says (sd-scripts' get_my_scheduler).
    """
    original_scheduler = pipe.scheduler
    rng_state = torch.get_rng_state()  # sd-scripts restores the RNG after sampling too
    cuda_rng_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    images = []
    try:
        for sample in prompts:
            name = sample.sampler or sampler
            class_name, extra = _scheduler(name)
            if class_name == "PNDMScheduler" and not extra.get("skip_prk_steps") and sample.steps < PNDM_MIN_STEPS:
                raise CharLoRAError(
                    f"sample prompt {sample.prompt!r}: the {name} sampler needs at least {PNDM_MIN_STEPS} steps "
                    f"(--s {sample.steps}); raise --s or choose another sampler"
                )
            config = dict(original_scheduler.config, **({"prediction_type": "v_prediction"} if v_prediction else {}))
            pipe.scheduler = make_sampler(name, config)
            seed = sample.seed if sample.seed is not None else torch.Generator().seed()
            generator = torch.Generator(device="cpu").manual_seed(seed)
            with torch.no_grad():
                embeds = _embeddings(pipe, sample.prompt, sample.negative_prompt or "", device, clip_skip,
                                     max_token_length)
                result = pipe(
                    **embeds,
                    height=sample.height,
                    width=sample.width,
                    num_inference_steps=sample.steps,
                    guidance_scale=sample.cfg_scale,
                    generator=generator,
                    output_type="pil",
                )
            images.append(result.images[0])
    finally:
        pipe.scheduler = original_scheduler
        torch.set_rng_state(rng_state)
        if cuda_rng_state is not None:
            torch.cuda.set_rng_state_all(cuda_rng_state)
    return images


def sample_filename(output_name, step, prompt_index, seed, epoch=None, timestamp=None) -> str:
    """Kohya's sample file name: NAME_e000003_00_20240101120000_1234.png at an epoch's end,
    NAME_000500_00_20240101120000_1234.png at a step; no seed part when the prompt had no --d."""
    if timestamp is None:
        timestamp = time.strftime("%Y%m%d%H%M%S", time.localtime())
    prefix = "" if output_name is None else f"{output_name}_"
    number = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    seed_part = "" if seed is None else f"_{seed}"
    return f"{prefix}{number}_{prompt_index:02d}_{timestamp}{seed_part}.png"


def training_samples(ctx, step: int, epoch: int, at_epoch_end: bool, writer=None) -> list[str]:
    """The sample prompts drawn with the network being trained (`ctx`: train.context.RunContext), saved under
    Kohya's names in output_dir/sample/ (and to TensorBoard); returns the files' paths."""
    v, pipe, place = ctx.values, ctx.pipe, ctx.place
    width, height = (int(x) for x in v["max_resolution"].split(","))
    # Kohya's default sample size is 512x512; the training resolution suits any base model better
    prompts = parse_prompts(v["sample_prompts"], {"width": width, "height": height})
    folder = place.output_dir / "sample"
    folder.mkdir(exist_ok=True)
    # the VAE and the text encoders may have left the GPU (latent / text-encoder output caches): back for now
    parked = [(model, next(model.parameters()).device)
              for model in [pipe.vae] + [getattr(pipe, name) for name in family_of(pipe).text_encoders]]
    for model, _ in parked:
        model.to(ctx.device)
    rng_state = torch.get_rng_state()  # sampling must not change the training's random stream
    try:
        pipe.unet.eval()
        for name in family_of(pipe).text_encoders:
            getattr(pipe, name).eval()
        images = generate_samples(pipe, prompts, v["sample_sampler"], ctx.device, clip_skip=v["clip_skip"],
                                  max_token_length=v["max_token_length"],
                                  v_prediction=v["v_parameterization"])
    finally:
        torch.set_rng_state(rng_state)
        pipe.unet.train()
        for name in family_of(pipe).text_encoders:
            getattr(pipe, name).train(ctx.network.settings.train_text_encoder)
        for model, device in parked:
            model.to(device)
    paths = []
    for index, (prompt, image) in enumerate(zip(prompts, images)):
        path = folder / sample_filename(place.name, step, index, prompt.seed, epoch=epoch if at_epoch_end else None)
        image.save(path)
        paths.append(str(path))
        if writer is not None:
            import numpy as np

            writer.add_image(f"sample/{index}", np.asarray(image), step, dataformats="HWC")
    return paths
