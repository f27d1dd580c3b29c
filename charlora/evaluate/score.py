"""Scoring a run's checkpoints from their generated images, and which one to keep.

The metrics are DreamBooth's (Ruiz et al. 2023), computed with a CLIP image tower (and its text tower
when there is one). All similarities are cosines of L2-normalised embeddings:

- identity: mean similarity of every generated image to every training image (CLIP-I). Does it
  look like the character?
- consistency: mean pairwise similarity among one checkpoint's generated images (across seeds and
  prompts). Does it draw the same character every time? No trainer reports this.
- prompt_fidelity: mean similarity of each generated image to its own prompt's text (CLIP-T).
  Does it still follow the prompt? None without a text tower.
- nearest_copy: the highest similarity of any generated image to any single training image.

An embedder may split its vectors into two parts (an attribute `parts`: {"identity": slice, "copy": slice}):
identity, consistency and prompt fidelity are then cosines of the "identity" part, nearest_copy of the "copy"
part. The toy scorer does: what makes a picture the character (its shape and colours) is not what makes it
a copy of one training picture (the same place, size and background). A CLIP embedding serves both.

Overfitting warnings, and why these numbers (heuristics; tune them with real runs):
- COPY_THRESHOLD 0.95: with CLIP ViT-L/14, different photos of one person mostly score 0.75-0.9,
  while an image and a resized or re-compressed copy of it score above 0.95. A generation that
  close to one training photo reproduces it (pose, framing, background) instead of drawing the
  character anew.
- PROMPT_MARGIN 0.03: CLIP-T values sit in a narrow band (~0.2-0.35); a drop of more than 0.03
  below the no-LoRA baseline means the LoRA overrides what the prompt asks for.
- IDENTITY_MARGIN 0.02: with a few seeds x prompts, identity differences below ~0.02 are within
  seed noise, so a later checkpoint must beat an earlier one by more to be worth its extra training.

The rule (RULE below): among checkpoints with no overfitting warning, keep the EARLIEST whose identity
is within the margin of the best; later epochs that look no more like the character only add
overfitting and lose flexibility.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import CharLoRAError, ModelLoadError
from ..params.evaluation import DEFAULT_SCORER_ID, EVALUATION

DEFAULT_SCORER = DEFAULT_SCORER_ID  # the CLIP SD 1.5's text encoder comes from
TINY_SCORER = "tiny"  # a random tiny CLIP: exercises the scoring code, no download; its numbers mean nothing
TOY_SCORER = "toy"  # a small CNN trained on the toy world (charlora.toy.embedder): meaningful for toy-model runs
TINY_NOTE = (f"to try scoring offline, use the scorer '{TOY_SCORER}' (--scorer {TOY_SCORER}): a small CNN trained on "
             "CharLoRA's toy world, no download, its scores mean something for pictures of that world (the toy "
             f"model's runs); '{TINY_SCORER}' is a random tiny CLIP for tests, its scores mean nothing")
SCORER_HELP = EVALUATION["scorer"].help
COPY_THRESHOLD = 0.95
PROMPT_MARGIN = 0.03
IDENTITY_MARGIN = 0.02
BASELINE_NAME = "no LoRA"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_BATCH = 16

RULE = ("Among the checkpoints with no overfitting warning (no generated image with similarity >= "
        f"{COPY_THRESHOLD} to a training image; prompt fidelity not more than {PROMPT_MARGIN} below the no-LoRA "
        "baseline), keep the earliest (by epoch) whose identity is within {margin} of the best identity among "
        "them. If every checkpoint has a warning, keep the one with the fewest warnings, then the best identity.")


# ---------------------------------------------------------------------------------------------------
# The embedder


class Embedder:
    """A CLIP image tower (and optionally a text tower) giving L2-normalised embeddings.

    `vision_model` is a transformers CLIPVisionModel (its `pooler_output` is the pooled CLS state) and
    `visual_projection` maps it to the shared space; the text side is a CLIPTextModel + projection + tokenizer.
    `model` is the module everything came from (for saving or inspection).
    """

    def __init__(self, vision_model, visual_projection, *, text_model=None, text_projection=None, tokenizer=None,
                 image_size=224, resize=None, mean=CLIP_MEAN, std=CLIP_STD, name="", model=None, device="cpu"):
        self.device = torch.device(device)
        self.vision_model = vision_model.float().to(self.device).eval()
        self.visual_projection = visual_projection.float().to(self.device).eval()
        has_text = text_model is not None and text_projection is not None and tokenizer is not None
        self.text_model = text_model.float().to(self.device).eval() if has_text else None
        self.text_projection = text_projection.float().to(self.device).eval() if has_text else None
        self.tokenizer = tokenizer if has_text else None
        self.image_size = int(image_size)  # centre-crop size
        self.resize = max(int(resize or image_size), self.image_size)  # shortest side before the crop
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
        self.name = name
        self.model = model

    @property
    def has_text(self) -> bool:
        return self.text_model is not None

    @property
    def dim(self) -> int:
        return self.visual_projection.out_features

    def preprocess(self, image) -> torch.Tensor:
        """CLIP's preprocessing without torchvision: bicubic resize of the shortest side, centre crop, normalise."""
        image = image.convert("RGB")
        w, h = image.size
        if w <= h:
            new_w, new_h = self.resize, max(self.resize, int(self.resize * h / w))
        else:
            new_w, new_h = max(self.resize, int(self.resize * w / h)), self.resize
        image = image.resize((new_w, new_h), resample=_bicubic())
        left, top = (new_w - self.image_size) // 2, (new_h - self.image_size) // 2
        image = image.crop((left, top, left + self.image_size, top + self.image_size))
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return torch.from_numpy((pixels - self.mean) / self.std)

    @torch.inference_mode()
    def embed_images(self, images) -> torch.Tensor:
        """(N, D) float32 CPU tensor of unit vectors, one per PIL image."""
        out = [torch.empty(0, self.dim)]
        for i in range(0, len(images), _BATCH):
            pixels = torch.stack([self.preprocess(im) for im in images[i:i + _BATCH]]).to(self.device)
            pooled = self.vision_model(pixel_values=pixels).pooler_output
            out.append(_normalise(self.visual_projection(pooled)).float().cpu())
        return torch.cat(out)

    @torch.inference_mode()
    def embed_texts(self, texts) -> torch.Tensor | None:
        """(N, D) unit vectors, one per text; None when this scorer has no text tower."""
        if not self.has_text:
            return None
        out = [torch.empty(0, self.text_projection.out_features)]
        max_length = min(self.tokenizer.model_max_length, self.text_model.config.max_position_embeddings)
        for i in range(0, len(texts), _BATCH):
            tokens = self.tokenizer(list(texts[i:i + _BATCH]), padding="max_length", truncation=True,
                                    max_length=max_length, return_tensors="pt").to(self.device)
            pooled = self.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).pooler_output
            out.append(_normalise(self.text_projection(pooled)).float().cpu())
        return torch.cat(out)


def _bicubic():
    from PIL import Image

    return Image.Resampling.BICUBIC


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1, eps=1e-12)


def tiny_clip(seed=0) -> Embedder:
    """A tiny random-weight CLIPModel (32 px images) with text tower, for tests and offline demos.

    Its numbers mean nothing about likeness; they only exercise the code. Same seed => same weights.
    """
    from transformers import CLIPConfig, CLIPModel

    from ..models.tiny import load_tokenizer_from_files, tiny_tokenizer_files

    tokenizer = load_tokenizer_from_files(tiny_tokenizer_files())
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    return _from_clip_model(model, tokenizer, name=f"tiny random CLIP (seed {seed}, tests only)")


def toy_scorer(seed=0):
    """The toy world's scorer (charlora.toy.embedder.toy_embedder): trained once per machine, then loaded.
    Duck-typed like Embedder; imported here only when asked for, so importing this module trains nothing."""
    from ..toy.embedder import toy_embedder

    return toy_embedder(seed)


def _from_clip_model(model, tokenizer, name, preprocessing=None, device="cpu") -> Embedder:
    """Embedder from a transformers CLIPModel or CLIPVisionModelWithProjection (tokenizer None: image only)."""
    text_model = getattr(model, "text_model", None)
    vision_config = model.vision_model.config
    settings = {"image_size": vision_config.image_size, **(preprocessing or {})}  # the folder's own settings win
    return Embedder(model.vision_model, model.visual_projection, text_model=text_model,
                    text_projection=getattr(model, "text_projection", None), tokenizer=tokenizer,
                    name=name, model=model, device=device, **settings)


# ---------------------------------------------------------------------------------------------------
# Loading a scorer


def scorer_for(scorer: str, base_model: str = "", device="cpu") -> Embedder:
    """The scorer a user chose (the Scorer field, `score --scorer`; SCORER_HELP says it in words):
    "tiny" (any case) -> tiny_clip(); "toy" -> toy_scorer() (a CNN that knows the toy world); a folder or Hub
    id -> load_embedder; empty -> the base model's safety checker when the base model is a diffusers folder that
    has one (no download), else DEFAULT_SCORER, fetched from the Hub once and then read from its cache (a
    single-file base model has no CLIP image tower)."""
    from ..models.loading import clean_path

    text = str(scorer or "").strip().strip('"').strip("'").strip()
    if text.lower() == TINY_SCORER:
        return tiny_clip()
    if text.lower() == TOY_SCORER:
        return toy_scorer()
    if text:
        return load_embedder(text, device)
    base = clean_path(base_model) if base_model else None
    if base is not None and base.is_dir() and (base / "safety_checker").is_dir():
        return load_embedder(str(base), device)
    return load_embedder(DEFAULT_SCORER, device)


def load_embedder(source: str, device="cpu") -> Embedder:
    """A scorer from a local CLIP folder, an SD 1.5 diffusers folder (its safety checker) or a Hub id."""
    if str(source).strip().lower() == TINY_SCORER:
        return tiny_clip()
    if str(source).strip().lower() == TOY_SCORER:
        return toy_scorer()
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "safety_checker").is_dir():
            return _load_safety_checker(path / "safety_checker", path / "feature_extractor", str(source), device)
        config_file = path / "config.json"
        if not config_file.is_file() and (path / "model_index.json").is_file():
            raise CharLoRAError(f"{str(path)!r} is a diffusers folder saved without safety_checker/, so it has no "
                                "image tower to score with: leave the scorer empty (it then uses "
                                f"{DEFAULT_SCORER}), or choose a folder with a saved CLIPModel; {TINY_NOTE}")
        if not config_file.is_file():
            raise CharLoRAError(f"scorer folder {str(path)!r} has no config.json: choose a folder with a saved "
                                "transformers CLIPModel, or a Stable Diffusion 1.5 diffusers folder with "
                                f"safety_checker/; {TINY_NOTE}")
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CharLoRAError(f"{config_file} cannot be read as JSON ({exc}); the scorer folder is damaged") from None
        if "StableDiffusionSafetyChecker" in (config.get("architectures") or []):
            return _load_safety_checker(path, path.parent / "feature_extractor", str(source), device)
        return _load_transformers(str(path), config, local_only=True, name=str(source), device=device,
                                  preprocessing=_read_preprocessing(path))
    if path.exists():
        raise CharLoRAError(f"scorer {str(path)!r} is a file, not a folder: choose a folder with a saved CLIPModel, "
                            "a Stable Diffusion 1.5 diffusers folder, or a Hugging Face model id (or leave the scorer "
                            f"empty: {DEFAULT_SCORER}); {TINY_NOTE}")
    from ..models.loading import looks_like_hub_id

    if looks_like_hub_id(source):
        return _load_from_hub(source, device)
    raise CharLoRAError(f"scorer {source!r} not found: no such folder. Choose a folder with a saved CLIPModel, a "
                        f"Stable Diffusion 1.5 diffusers folder (its safety_checker/ is used), or a Hugging Face id "
                        f"such as {DEFAULT_SCORER!r}; {TINY_NOTE}")


def _load_from_hub(repo_id: str, device) -> Embedder:
    from huggingface_hub import constants
    from transformers import PretrainedConfig

    # The local cache first: no network call at all when the model was fetched before.
    try:
        config, _ = PretrainedConfig.get_config_dict(repo_id, local_files_only=True)
        return _load_transformers(repo_id, config, local_only=True, name=repo_id, device=device)
    except (OSError, ValueError, CharLoRAError) as exc:
        error = exc  # not (fully) cached
    unreachable = None
    if constants.HF_HUB_OFFLINE:
        unreachable = "offline mode: HF_HUB_OFFLINE is set"
    elif not _hub_reachable(constants.ENDPOINT):
        # Without this probe huggingface_hub retries with back-off for ~25 s before giving up.
        unreachable = f"cannot connect to {constants.ENDPOINT}"
    else:
        try:
            config, _ = PretrainedConfig.get_config_dict(repo_id)  # downloads once, into the HF cache
        except (OSError, ValueError) as exc:
            error = exc
        else:
            return _load_transformers(repo_id, config, local_only=False, name=repo_id, device=device)
    where = ("run once online (it is downloaded once, into the Hugging Face cache), or download it into a folder "
             "(the CLIPModel and CLIPProcessor files: config.json, model.safetensors, the tokenizer files and "
             "preprocessor_config.json) and give that folder as the Scorer (--scorer FOLDER); a Stable Diffusion 1.5 "
             f"diffusers folder with safety_checker/ works too, without a download; {TINY_NOTE}")
    if unreachable:
        raise CharLoRAError(f"the scorer {repo_id} is not on this computer and the Hugging Face Hub cannot be reached "
                            f"({unreachable}): {where}") from None
    detail = str(error).splitlines()[0].rstrip(".") if str(error) else type(error).__name__
    raise CharLoRAError(f"the scorer {repo_id} could not be fetched from the Hugging Face Hub ({detail}): check the "
                        f"id, or {where}") from None


def _hub_reachable(endpoint: str, timeout=3.0) -> bool:
    """Can a TCP connection reach the Hub at all? (Behind a proxy, let the client decide.)"""
    import os
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError:
        return False
    return True


def _load_transformers(source, config: dict, local_only, name, device, preprocessing=None) -> Embedder:
    from transformers import CLIPModel, CLIPTokenizer, CLIPVisionModelWithProjection

    model_type = config.get("model_type")
    classes = {"clip": CLIPModel, "clip_vision_model": CLIPVisionModelWithProjection}
    if model_type not in classes:
        raise CharLoRAError(f"scorer {name!r}: config.json has model_type {model_type!r}; expected a CLIP model "
                            "('clip' or 'clip_vision_model')")
    try:
        model, info = classes[model_type].from_pretrained(source, local_files_only=local_only, dtype=torch.float32,
                                                          output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"scorer {name!r} could not be loaded ({str(exc).splitlines()[0]}); is the folder "
                             "complete (config.json and model.safetensors)?") from None
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    if missing:  # random weights would give meaningless scores
        raise ModelLoadError(f"scorer {name!r}: {len(missing)} weights missing from its files (e.g. {missing[0]}); "
                             "the folder does not hold a complete CLIP model")
    tokenizer = None
    if model_type == "clip":
        try:
            tokenizer = CLIPTokenizer.from_pretrained(source, local_files_only=local_only)
        except (OSError, ValueError, TypeError):
            tokenizer = None  # no tokenizer saved: score images only (prompt fidelity unavailable)
    return _from_clip_model(model, tokenizer, name=name, preprocessing=preprocessing, device=device)


def _load_safety_checker(folder: Path, feature_extractor: Path, name: str, device) -> Embedder:
    """SD 1.5's safety checker is a CLIP ViT-L/14 image tower + projection: load just those, no diffusers needed."""
    from transformers import CLIPConfig, CLIPVisionModel

    try:
        config = CLIPConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{folder / 'config.json'} is not a safety checker config ({exc})") from None
    state = _read_weights(folder)
    vision, projection = {}, {}
    for key, value in state.items():
        if key.startswith("visual_projection."):
            projection[key.removeprefix("visual_projection.")] = value.float()
        elif key.startswith("vision_model."):
            # transformers < 5 saved an extra `vision_model.` level inside CLIPVisionModel.
            key = key.removeprefix("vision_model.")
            vision[key.removeprefix("vision_model.")] = value.float()
    vision_model = CLIPVisionModel(config.vision_config)
    visual_projection = torch.nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
    try:
        missing, _ = vision_model.load_state_dict(vision, strict=False)
        visual_projection.load_state_dict(projection)
    except RuntimeError as exc:
        raise ModelLoadError(f"safety checker weights in {folder} do not match its config.json "
                             f"({str(exc).splitlines()[0]})") from None
    missing = [k for k in missing if "position_ids" not in k]
    if missing:
        raise ModelLoadError(f"safety checker weights in {folder} lack {len(missing)} image-tower weights "
                             f"(e.g. {missing[0]}); the file is incomplete")
    settings = {"image_size": config.vision_config.image_size, **_read_preprocessing(feature_extractor)}
    return Embedder(vision_model, visual_projection, name=f"{name} (safety checker, image only)", device=device,
                    **settings)


def _read_weights(folder: Path) -> dict:
    for file_name in ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin", "pytorch_model.fp16.bin"):
        file = folder / file_name
        if not file.is_file():
            continue
        try:
            if file.suffix == ".safetensors":
                from safetensors.torch import load_file

                return load_file(file)
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated download, not a weights file
            raise ModelLoadError(f"{file} cannot be read ({str(exc).splitlines()[0]}); download it again") from None
    raise ModelLoadError(f"no weights in {folder}: expected model.safetensors or pytorch_model.bin")


def _read_preprocessing(folder: Path) -> dict:
    """Resize/crop/mean/std from a preprocessor_config.json if there is one (else the model's defaults)."""
    file = Path(folder) / "preprocessor_config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    out = {}
    crop, size = config.get("crop_size"), config.get("size")
    if isinstance(crop, dict) and crop.get("height") == crop.get("width"):
        crop = crop.get("height")
    if isinstance(size, dict):
        size = size.get("shortest_edge")
    if isinstance(crop, int):
        out["image_size"] = crop
    if isinstance(size, int):
        out["resize"] = size
    for key in ("image_mean", "image_std"):
        if isinstance(config.get(key), list) and len(config[key]) == 3:
            out[key.removeprefix("image_")] = tuple(config[key])
    return out


# ---------------------------------------------------------------------------------------------------
# Scores


@dataclass
class CheckpointScore:
    name: str
    epoch: int | None
    identity: float
    consistency: float
    prompt_fidelity: float | None
    nearest_copy: float
    warnings: list[str] = field(default_factory=list)
    steps: int | None = None  # training steps when the file was saved: orders step files among epochs
    label: str | None = None  # how to call it ("epoch 3", "step 18 (during epoch 1)"); default from epoch


@dataclass
class Recommendation:
    name: str
    epoch: int | None
    reasons: list[str]
    rule: str
    all_warned: bool = False  # True when every checkpoint had a warning (the fallback was used)
    label: str | None = None  # "epoch 3", "step 18 (during epoch 1)"


def _as_matrix(x) -> torch.Tensor:
    """A 2-D float32 CPU tensor from a tensor, array or nested list (one vector -> one row)."""
    x = x.detach().float().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float32))
    if x.ndim == 1:
        return x.reshape(1, -1) if x.numel() else x.reshape(0, 0)
    return x


def cosine_matrix(a, b) -> torch.Tensor:
    """(N, M) cosine similarities between the rows of a (N, D) and b (M, D); zero vectors give 0."""
    a, b = _as_matrix(a), _as_matrix(b)
    if a.shape[1] != b.shape[1]:
        raise CharLoRAError(f"embeddings of different sizes ({a.shape[1]} vs {b.shape[1]}): the images were embedded "
                            "by different scorers; embed all of them with the same scorer")
    return _normalise(a) @ _normalise(b).T


def _part(x: torch.Tensor, parts, name: str) -> torch.Tensor:
    return x if not parts or name not in parts else x[:, parts[name]]


def score_checkpoint(name, generated_embs, train_embs, text_embs=None, epoch=None, baseline=None,
                     parts=None) -> CheckpointScore:
    """Scores of one checkpoint. `text_embs[i]` is the prompt embedding of generated image i (or None).

    With `baseline` (the no-LoRA score) the prompt-fidelity warning is checked too. `parts` is the
    embedder's {"identity": slice, "copy": slice} when its vectors have two parts (the module docstring).
    """
    generated, train = _as_matrix(generated_embs), _as_matrix(train_embs)
    if len(generated) == 0:
        raise CharLoRAError(f"checkpoint {name!r} has no generated images to score: generate its evaluation "
                            "images first")
    if len(train) == 0:
        raise CharLoRAError("no training images to compare with: point the evaluation at the run's dataset folder")
    nearest_copy = float(cosine_matrix(_part(generated, parts, "copy"), _part(train, parts, "copy")).max())
    generated, train = _part(generated, parts, "identity"), _part(train, parts, "identity")
    to_train = cosine_matrix(generated, train)
    n = len(generated)
    if n > 1:  # mean over the off-diagonal pairs (the diagonal is each image with itself)
        among = cosine_matrix(generated, generated)
        consistency = float((among.sum() - among.diagonal().sum()) / (n * (n - 1)))
    else:
        consistency = 1.0
    fidelity = None
    if text_embs is not None:
        texts = _as_matrix(text_embs)
        if len(texts) != n:
            raise CharLoRAError(f"checkpoint {name!r}: {len(texts)} prompt embeddings for {n} images; give one prompt "
                                "per generated image")
        fidelity = float(cosine_matrix(generated, _part(texts, parts, "identity")).diagonal().mean())
    score = CheckpointScore(name=name, epoch=epoch, identity=float(to_train.mean()), consistency=consistency,
                            prompt_fidelity=fidelity, nearest_copy=nearest_copy)
    score.warnings = check_warnings(score, baseline)
    return score


def score_baseline(generated_embs, train_embs, text_embs=None, parts=None) -> CheckpointScore:
    """The base model's images without any LoRA: how much each checkpoint adds is measured against this."""
    return score_checkpoint(BASELINE_NAME, generated_embs, train_embs, text_embs, parts=parts)


def score_images(embedder: Embedder, name, images, train_embs, prompts=None, epoch=None, baseline=None):
    """Embed a checkpoint's PIL images (and their prompts, one per image) and score them."""
    text_embs = None
    if prompts is not None and embedder.has_text:
        unique = list(dict.fromkeys(prompts))  # each prompt is embedded once
        by_prompt = dict(zip(unique, embedder.embed_texts(unique)))
        text_embs = torch.stack([by_prompt[p] for p in prompts])
    return score_checkpoint(name, embedder.embed_images(images), train_embs, text_embs, epoch=epoch, baseline=baseline,
                            parts=getattr(embedder, "parts", None))


def check_warnings(score: CheckpointScore, baseline: CheckpointScore | None = None) -> list[str]:
    """The overfitting warnings of one score (the prompt one needs the no-LoRA baseline)."""
    warnings = []
    if score.nearest_copy >= COPY_THRESHOLD:
        warnings.append(f"near-copy: a generated image has similarity {score.nearest_copy:.3f} to one training image "
                        f"(>= {COPY_THRESHOLD}); it reproduces that photo instead of drawing the character anew "
                        "(overfitting)")
    if baseline is not None and score.prompt_fidelity is not None and baseline.prompt_fidelity is not None:
        drop = baseline.prompt_fidelity - score.prompt_fidelity
        if drop > PROMPT_MARGIN:
            warnings.append(f"ignores the prompt: prompt fidelity {score.prompt_fidelity:.3f} is {drop:.3f} below the "
                            f"no-LoRA baseline's {baseline.prompt_fidelity:.3f} (more than {PROMPT_MARGIN}); the LoRA "
                            "overrides what the prompt asks for (overfitting)")
    return warnings


def _all_warnings(score, baseline):
    return list(dict.fromkeys(score.warnings + check_warnings(score, baseline)))


def _label(score):
    if score.label:
        return score.label
    return f"epoch {score.epoch}" if score.epoch is not None else score.name


def _in_order(scores):
    """In training order: by steps when every score has them (a step file falls between the epochs it
    was saved between), else by epoch with those without one (e.g. a step file) after, in list order."""
    if scores and all(s.steps is not None for s in scores):
        return [s for _, s in sorted(enumerate(scores), key=lambda p: (p[1].steps, p[0]))]
    return [s for _, s in sorted(enumerate(scores), key=lambda p: (p[1].epoch is None, p[1].epoch or 0, p[0]))]


def recommend(scores, baseline=None, margin=IDENTITY_MARGIN) -> Recommendation:
    """Which checkpoint to keep, by RULE, with the reasons in words."""
    if not scores:
        raise CharLoRAError("no checkpoints were scored: generate evaluation images for at least one LoRA file first")
    pairs = [(s, _all_warnings(s, baseline)) for s in _in_order(scores)]
    clean = [s for s, w in pairs if not w]
    warned = [(s, w) for s, w in pairs if w]
    reasons = []
    if clean:
        best = max(clean, key=lambda s: s.identity)
        chosen = next(s for s in clean if s.identity >= best.identity - margin - 1e-9)
        if chosen is best:
            reasons.append(f"identity {chosen.identity:.3f} is the best of the checkpoints without warnings, and no "
                           f"earlier one comes within {margin} of it")
        else:
            reasons.append(f"identity {chosen.identity:.3f} is within {margin} of the best {best.identity:.3f} "
                           f"({_label(best)}) and it is the earliest such checkpoint: later ones add training, and "
                           "overfitting risk, with no clear gain in likeness")
    else:
        fewest = min(len(w) for _, w in pairs)
        chosen = max((s for s, w in pairs if len(w) == fewest), key=lambda s: s.identity)
        reasons.append(f"every checkpoint has an overfitting warning; this one has the fewest ({fewest}) and the best "
                       f"identity among those ({chosen.identity:.3f}). Consider training again with fewer epochs, a "
                       "lower learning rate or more varied training images")
    reasons.append(f"consistency {chosen.consistency:.3f}: how alike its images are across seeds (best of all "
                   f"checkpoints {max(s.consistency for s, _ in pairs):.3f})")
    if chosen.prompt_fidelity is not None:
        has_base = baseline is not None and baseline.prompt_fidelity is not None
        base = f" (no LoRA: {baseline.prompt_fidelity:.3f})" if has_base else ""
        reasons.append(f"prompt fidelity {chosen.prompt_fidelity:.3f}{base}")
    if baseline is not None:
        gain = chosen.identity - baseline.identity
        reasons.append(f"the base model without the LoRA scores identity {baseline.identity:.3f}: this LoRA adds "
                       f"{gain:+.3f}" + (" - little gain: the LoRA may not have learned the character yet"
                                         if gain < margin else ""))
    else:
        reasons.append("no no-LoRA baseline was scored, so how much the LoRA adds is not known")
    if clean and warned:
        skipped = "; ".join(f"{_label(s)} ({', '.join(x.split(':')[0] for x in w)})" for s, w in warned)
        reasons.append(f"skipped {len(warned)} checkpoint(s) with overfitting warnings: {skipped}")
    elif clean:
        reasons.append("no checkpoint has an overfitting warning")
    else:
        reasons.append("its warnings: " + "; ".join(next(w for s, w in pairs if s is chosen)))
    return Recommendation(name=chosen.name, epoch=chosen.epoch, reasons=reasons, rule=RULE.format(margin=margin),
                          all_warned=not clean, label=_label(chosen))


def _round(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)


def _row(score, warnings, is_baseline=False):
    return {"name": score.name, "label": _label(score), "epoch": score.epoch, "steps": score.steps,
            "identity": _round(score.identity),
            "consistency": _round(score.consistency), "prompt_fidelity": _round(score.prompt_fidelity),
            "nearest_copy": _round(score.nearest_copy), "warnings": list(warnings), "baseline": is_baseline}


def scores_table(scores, baseline=None) -> list[dict]:
    """One row per checkpoint in epoch order (the baseline first, flagged), floats rounded to 4 decimals."""
    rows = [_row(baseline, [], is_baseline=True)] if baseline is not None else []
    return rows + [_row(s, _all_warnings(s, baseline)) for s in _in_order(scores)]


def score_report(scores, baseline=None, margin=IDENTITY_MARGIN, scorer=None) -> dict:
    """Everything for the report JSON: scorer, thresholds, rule, rows and the recommendation."""
    rec = recommend(scores, baseline, margin) if scores else None
    return {
        "scorer": scorer,
        "thresholds": {"copy_threshold": COPY_THRESHOLD, "prompt_margin": PROMPT_MARGIN, "identity_margin": margin},
        "rule": RULE.format(margin=margin),
        "rows": scores_table(scores, baseline),
        "recommendation": None if rec is None else {"name": rec.name, "label": rec.label, "epoch": rec.epoch,
                                                    "reasons": rec.reasons, "all_warned": rec.all_warned},
    }
