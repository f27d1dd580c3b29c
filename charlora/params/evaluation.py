"""The evaluation tools' settings (grid, seed batch, score) and the dataset preparer's, declared once.

Same `Param` spec as the training table (`table.py`): the engine's specs (`evaluate.GridSpec`,
`SeedBatchSpec`, `ScoreSpec`, `dataset.prepare_dataset`), the CLI (`grid`, `seeds`, `score`, `dataset
prepare`) and the Evaluation and Dataset tabs all read their defaults, ranges and help from here. These
are not Kohya training parameters: they never enter a training config, a preset or a LoRA file.
"""

from __future__ import annotations

from .spec import Param

DEFAULT_SCORER_ID = "openai/clip-vit-large-patch14"  # the CLIP the score uses when nothing else is given

EVALUATION_PARAMS: tuple[Param, ...] = (
    # ---------------------------------------------------------------- every image (grid, seed batch, score)
    Param("negative", "text", "", "generation", label="Negative prompt", help="Negative prompt of every image."),
    Param("steps", "int", 20, "generation", min=1, max=150, label="Steps",
          help="Sampling steps per image (A1111's range: 1-150)."),
    Param("cfg", "float", 7.0, "generation", min=1.0, max=30.0, label="CFG",
          help="Classifier-free guidance scale (A1111's range: 1-30)."),
    Param("sampler", "str", "euler_a", "generation", label="Sampler",
          help="Kohya's or A1111's sampler name, any case (euler_a, dpmsolver++, \"Euler a\", "
               "\"DPM++ 2M Karras\", ...)."),
    Param("width", "int", 512, "generation", min=64, max=2048, label="Width",
          help="Image width in pixels (SD 1.5 draws at 512, SDXL at 1024; past 2048 one image needs many GB)."),
    Param("height", "int", 512, "generation", min=64, max=2048, label="Height", help="Image height in pixels."),
    Param("clip_skip", "int", 1, "generation", min=1, max=12, label="Clip skip",
          help="Text-encoder layers skipped from the end, as in A1111 (1 = none)."),
    # ---------------------------------------------------------------- grid
    Param("seed", "int", 1234, "grid", min=0, max=2**32 - 1, label="Seed",
          help="The one seed of every cell (unless an axis is seed)."),
    Param("x_kind", "str", "checkpoint", "grid", label="X axis", help="What changes along the columns."),
    Param("y_kind", "str", "cfg", "grid", label="Y axis", help="What changes along the rows."),
    Param("y_values", "str", "7,8,9,10", "grid", label="Y values", help="The rows' values, in A1111's syntax."),
    Param("z_kind", "str", "nothing", "grid", label="Z axis (one grid per value)", help="One grid per value."),
    # ---------------------------------------------------------------- seed batch
    Param("seeds", "str", "1-8", "seed batch", label="Seeds", help="Seeds of the batch, e.g. 1-8 or 3,5,7."),
    Param("weight", "float", 1.0, "seed batch", min=-10.0, max=10.0, label="LoRA weight",
          help="The LoRA's weight (A1111's <lora:NAME:W>)."),
    # ---------------------------------------------------------------- score
    Param("score_prompts", "text", "portrait of a girl\na girl reading a book in a park", "score",
          label="Prompts (one per line)",
          help="One prompt per line; each is drawn with every checkpoint (and without LoRA)."),
    Param("score_seeds", "str", "1-4", "score", label="Seeds", help="Seeds of each prompt, e.g. 1-4."),
    Param("scorer", "str", "", "score", label="Scorer",
          help=f"Empty: the base model's safety checker (its CLIP), else {DEFAULT_SCORER_ID} (downloaded once); a "
               f"CLIP folder or Hugging Face id; 'toy' to score offline (a small CNN trained on the toy world: "
               f"meaningful for its runs); 'tiny' for tests (a random tiny CLIP: its scores mean nothing)."),
)

PREPARE_PARAMS: tuple[Param, ...] = (
    Param("repeats", "int", 10, "dataset preparation", min=1, max=10000, label="Repeats",
          help="How often each picture is seen per epoch: the 10 of Kohya's folder name 10_trigger class."),
    Param("reg_repeats", "int", 1, "dataset preparation", min=1, max=10000, label="Regularisation repeats",
          help="Repeats of the regularisation folder (1_class)."),
)

EVALUATION = {p.key: p for p in EVALUATION_PARAMS}
PREPARE = {p.key: p for p in PREPARE_PARAMS}


def evaluation_default(key: str):
    return EVALUATION[key].default


def prepare_default(key: str):
    return PREPARE[key].default
