"""The embedders that turn images (and prompts) into vectors for the score (`score.py` does the maths).

- a CLIP model (transformers' CLIPModel, or its image tower alone), from a folder or a Hugging Face id;
- the base model's safety checker (a CLIP ViT-L/14 image tower), from an SD 1.5 diffusers folder, no download;
- `toy`: a small CNN trained on the toy world (charlora.toy.embedder), `tiny`: a random tiny CLIP for tests.

Images are prepared by transformers' CLIPImageProcessor (bicubic resize of the shortest side, centre crop,
CLIP's mean and std), with the folder's own preprocessor_config.json when it has one.
"""

from __future__ import annotations

import json
from pathlib import Path

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
_BATCH = 16

class Embedder:
    """A CLIP image tower (and optionally a text tower) giving L2-normalised embeddings.

    `vision_model` is a transformers CLIPVisionModel (its `pooler_output` is the pooled CLS state) and
    `visual_projection` maps it to the shared space; the text side is a CLIPTextModel + projection + tokenizer.
    `model` is the module everything came from (for saving or inspection); `processor` the CLIPImageProcessor
    that prepares the images (default: CLIP's own settings at the image tower's size).
    """

    def __init__(self, vision_model, visual_projection, *, text_model=None, text_projection=None, tokenizer=None,
                 processor=None, name="", model=None, device="cpu"):
        self.device = torch.device(device)
        self.vision_model = vision_model.float().to(self.device).eval()
        self.visual_projection = visual_projection.float().to(self.device).eval()
        has_text = text_model is not None and text_projection is not None and tokenizer is not None
        self.text_model = text_model.float().to(self.device).eval() if has_text else None
        self.text_projection = text_projection.float().to(self.device).eval() if has_text else None
        self.tokenizer = tokenizer if has_text else None
        self.processor = processor or clip_processor(vision_model.config.image_size)
        self.name = name
        self.model = model

    @property
    def has_text(self) -> bool:
        return self.text_model is not None

    @property
    def dim(self) -> int:
        return self.visual_projection.out_features

    def preprocess(self, images) -> torch.Tensor:
        """(N, 3, crop, crop) pixel values of PIL images (any mode), as CLIP was trained on them."""
        return self.processor(images=[image.convert("RGB") for image in images], return_tensors="pt").pixel_values

    @torch.inference_mode()
    def embed_images(self, images) -> torch.Tensor:
        """(N, D) float32 CPU tensor of unit vectors, one per PIL image."""
        out = [torch.empty(0, self.dim)]
        for i in range(0, len(images), _BATCH):
            pixels = self.preprocess(images[i:i + _BATCH]).to(self.device)
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


def clip_processor(image_size: int, folder: str | Path | None = None, local_only: bool = True):
    """transformers' CLIPImageProcessor: the folder's (or Hub repo's) preprocessor_config.json when it has one,
    else CLIP's settings (bicubic resize of the shortest side, centre crop, OpenAI's mean and std) at this size."""
    from transformers import CLIPImageProcessor

    if folder is not None:
        try:
            return CLIPImageProcessor.from_pretrained(str(folder), local_files_only=local_only)
        except (OSError, ValueError, TypeError):
            pass  # no preprocessor_config.json: CLIP's defaults below
    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


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


def _from_clip_model(model, tokenizer, name, processor=None, device="cpu") -> Embedder:
    """Embedder from a transformers CLIPModel or CLIPVisionModelWithProjection (tokenizer None: image only)."""
    return Embedder(model.vision_model, model.visual_projection, text_model=getattr(model, "text_model", None),
                    text_projection=getattr(model, "text_projection", None), tokenizer=tokenizer,
                    processor=processor, name=name, model=model, device=device)


# ---------------------------------------------------------------------------------------------------
# Loading a scorer


def scorer_for(scorer: str, base_model: str = "", device="cpu") -> Embedder:
    """The scorer a user chose (the Scorer field, `score --scorer`; SCORER_HELP says it in words):
    "tiny" (any case) -> tiny_clip(); "toy" -> toy_scorer() (a CNN that knows the toy world); a folder or Hub
    id -> load_embedder; empty -> the base model's safety checker when the base model is a diffusers folder that
    has one (no download), else DEFAULT_SCORER, fetched from the Hub once and then read from its cache (a
    single-file base model has no CLIP image tower)."""
    from ..models.checkpoint_file import clean_path

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
        return _load_transformers(str(path), config, local_only=True, name=str(source), device=device)
    if path.exists():
        raise CharLoRAError(f"scorer {str(path)!r} is a file, not a folder: choose a folder with a saved CLIPModel, "
                            "a Stable Diffusion 1.5 diffusers folder, or a Hugging Face model id (or leave the scorer "
                            f"empty: {DEFAULT_SCORER}); {TINY_NOTE}")
    from ..models.checkpoint_file import looks_like_hub_id

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


def _load_transformers(source, config: dict, local_only, name, device) -> Embedder:
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
    processor = clip_processor(model.vision_model.config.image_size, source, local_only)
    return _from_clip_model(model, tokenizer, name=name, processor=processor, device=device)


def _load_safety_checker(folder: Path, feature_extractor: Path, name: str, device) -> Embedder:
    """SD 1.5's safety checker is a CLIP ViT-L/14 image tower + projection: diffusers loads it (both the current
    layout and the one transformers < 5 wrote); its concept heads are not used."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    try:
        checker, info = StableDiffusionSafetyChecker.from_pretrained(str(folder), local_files_only=True,
                                                                     output_loading_info=True)
    except (OSError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"the safety checker in {folder} cannot be loaded ({str(exc).splitlines()[0]}); is "
                             "the folder complete (config.json and model.safetensors)?") from None
    missing = [k for k in info.get("missing_keys", []) if "vision_model" in k or "visual_projection" in k]
    if missing:  # random weights would give meaningless scores
        raise ModelLoadError(f"safety checker weights in {folder} lack {len(missing)} image-tower weights "
                             f"(e.g. {missing[0]}); the file is incomplete")
    processor = clip_processor(checker.vision_model.config.image_size, feature_extractor)
    return Embedder(checker.vision_model, checker.visual_projection, processor=processor, device=device,
                    name=f"{name} (safety checker, image only)", model=checker)
