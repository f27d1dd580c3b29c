"""Scoring a run's checkpoints from their generated images, and which one to keep.

The embedders that give the vectors (CLIP, the base model's safety checker, the toy scorer) are loaded by
`embedders.py`; this module is the maths. The metrics are DreamBooth's (Ruiz et al. 2023), computed with a
CLIP image tower (and its text tower when there is one). All similarities are cosines of L2-normalised embeddings:

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

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import CharLoRAError

COPY_THRESHOLD = 0.95
PROMPT_MARGIN = 0.03
IDENTITY_MARGIN = 0.02
BASELINE_NAME = "no LoRA"

RULE = ("Among the checkpoints with no overfitting warning (no generated image with similarity >= "
        f"{COPY_THRESHOLD} to a training image; prompt fidelity not more than {PROMPT_MARGIN} below the no-LoRA "
        "baseline), keep the earliest (by epoch) whose identity is within {margin} of the best identity among "
        "them. If every checkpoint has a warning, keep the one with the fewest warnings, then the best identity.")


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


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1, eps=1e-12)


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
