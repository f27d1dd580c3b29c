"""Evaluation scores: the embedder, cosine math, the metrics, the warnings and the recommendation rule."""

import json
import math
import time

import numpy as np
import pytest
import torch
from PIL import Image

from charlora.errors import CharLoRAError
from charlora.evaluate import embedders as em
from charlora.evaluate import score as sc
from charlora.evaluate.embedders import load_embedder, tiny_clip
from charlora.evaluate.score import (BASELINE_NAME, COPY_THRESHOLD, CheckpointScore, cosine_matrix, recommend,
                                     score_baseline, score_checkpoint, score_images, score_report, scores_table)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's, as every CLIP checkpoint uses them
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def embedder():
    return tiny_clip(seed=0)


def noise_image(seed, size=(48, 40)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def unit(*values):
    v = torch.tensor(values, dtype=torch.float32)
    return v / v.norm()


def at_cos(c):
    """A 2-D unit vector whose cosine with (1, 0) is c."""
    return torch.tensor([c, math.sqrt(1 - c * c)])


def ckpt(epoch, identity, nearest=0.8, fidelity=None, consistency=0.7, name=None):
    """A crafted score; its near-copy warning is set as score_checkpoint would."""
    s = CheckpointScore(name or f"char-{epoch:06d}", epoch, identity, consistency, fidelity, nearest)
    s.warnings = sc.check_warnings(s)
    return s


# --- the embedder -----------------------------------------------------------------------------------

def test_identical_images_score_identity_and_consistency_one(embedder):
    image = noise_image(1)
    generated = embedder.embed_images([image, image.copy(), image.copy()])
    train = embedder.embed_images([image])
    s = score_checkpoint("char-000001", generated, train, epoch=1)
    assert s.identity == pytest.approx(1.0, abs=1e-5)
    assert s.consistency == pytest.approx(1.0, abs=1e-5)
    assert s.nearest_copy == pytest.approx(1.0, abs=1e-5)
    assert any(w.startswith("near-copy") for w in s.warnings)


def test_embeddings_are_unit_vectors_and_deterministic(embedder):
    images = [noise_image(i) for i in range(3)] + [noise_image(9).convert("RGBA"), noise_image(8).convert("L")]
    first, second = embedder.embed_images(images), embedder.embed_images(images)
    assert first.shape == (5, 32) and first.dtype == torch.float32
    assert torch.allclose(first.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.equal(first, second)
    assert embedder.embed_images([]).shape == (0, 32)
    texts = embedder.embed_texts(["a photo of sks cat", "the cat"])
    assert texts.shape == (2, 32) and torch.allclose(texts.norm(dim=1), torch.ones(2), atol=1e-5)
    assert tiny_clip(seed=0).embed_images(images[:1]).allclose(first[:1], atol=1e-6)  # same seed, same weights


def test_preprocessing_centre_crops_and_normalises(embedder):
    # 64x32: the shortest side is already 32, so the crop keeps columns 16..47: paint those green.
    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    pixels[:, :, 0] = 255
    pixels[:, 16:48] = (0, 255, 0)
    x = embedder.preprocess([Image.fromarray(pixels)])[0]
    assert x.shape == (3, 32, 32)
    expected = [(0 - CLIP_MEAN[0]) / CLIP_STD[0], (1 - CLIP_MEAN[1]) / CLIP_STD[1], (0 - CLIP_MEAN[2]) / CLIP_STD[2]]
    for channel, value in enumerate(expected):
        assert torch.allclose(x[channel], torch.full((32, 32), value), atol=1e-5)
    # A larger image is resized (shortest side to 32) before the crop; same input, same tensor.
    big = noise_image(3, size=(100, 70))
    assert embedder.preprocess([big]).shape == (1, 3, 32, 32)
    assert torch.equal(embedder.preprocess([big]), embedder.preprocess([big]))


# --- cosine math and metrics on constructed embeddings -----------------------------------------------

def test_cosine_matrix_math():
    e1, e2 = unit(1, 0, 0), unit(0, 1, 0)
    m = cosine_matrix(torch.stack([e1, e2]), torch.stack([e1, e2, unit(1, 1, 0), 3 * e1]))
    assert m[0, 1] == pytest.approx(0.0)
    assert m[0, 2] == pytest.approx(math.cos(math.pi / 4))
    assert m[0, 3] == pytest.approx(1.0)  # scale does not matter
    assert cosine_matrix([[1, 0]], [at_cos(0.5).tolist()])[0, 0] == pytest.approx(0.5)  # 60 degrees
    assert cosine_matrix([[0, 0]], [[1, 0]])[0, 0] == 0.0  # a zero vector is similar to nothing
    with pytest.raises(CharLoRAError, match="different sizes"):
        cosine_matrix(torch.ones(2, 3), torch.ones(2, 4))


def test_score_checkpoint_metrics():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    diag = unit(1, 1)
    generated, train = torch.stack([e1, diag]), torch.stack([e1, e2])
    s = score_checkpoint("char-000003", generated, train, text_embs=torch.stack([e1, e2]), epoch=3)
    r = math.sqrt(0.5)
    assert s.identity == pytest.approx((1 + 0 + r + r) / 4)
    assert s.consistency == pytest.approx(r)
    assert s.nearest_copy == pytest.approx(1.0)
    assert s.prompt_fidelity == pytest.approx((1 + r) / 2)  # each image against its own prompt only
    assert (s.name, s.epoch) == ("char-000003", 3)
    one = score_checkpoint("one", [at_cos(0.5).tolist()], train)
    assert one.consistency == 1.0 and one.prompt_fidelity is None
    with pytest.raises(CharLoRAError, match="no generated images"):
        score_checkpoint("empty", torch.empty(0, 2), train)
    with pytest.raises(CharLoRAError, match="one prompt per generated image"):
        score_checkpoint("x", generated, train, text_embs=e1[None])


def test_near_copy_warning_threshold():
    train = torch.tensor([[1.0, 0.0]])
    over = score_checkpoint("a", torch.stack([at_cos(0.2), at_cos(0.96)]), train)
    under = score_checkpoint("b", torch.stack([at_cos(0.2), at_cos(0.94)]), train)
    assert over.nearest_copy == pytest.approx(0.96, abs=1e-6) and under.nearest_copy == pytest.approx(0.94, abs=1e-6)
    assert len(over.warnings) == 1 and "near-copy" in over.warnings[0] and str(COPY_THRESHOLD) in over.warnings[0]
    assert under.warnings == []


def test_prompt_warning_against_baseline():
    train = torch.tensor([[1.0, 0.0]])
    image = at_cos(0.5)[None]

    def text_at(f):  # a prompt vector whose cosine with `image` is f
        angle = math.acos(0.5) + math.acos(f)
        return torch.tensor([[math.cos(angle), math.sin(angle)]])

    baseline = score_baseline(image, train, text_embs=text_at(0.30))
    assert baseline.name == BASELINE_NAME and baseline.prompt_fidelity == pytest.approx(0.30, abs=1e-6)
    dropped = score_checkpoint("c", image, train, text_embs=text_at(0.25), baseline=baseline)
    assert len(dropped.warnings) == 1 and dropped.warnings[0].startswith("ignores the prompt")
    assert score_checkpoint("c", image, train, text_embs=text_at(0.28), baseline=baseline).warnings == []
    assert score_checkpoint("c", image, train, baseline=baseline).warnings == []  # no text tower: nothing to compare


# --- the recommendation -----------------------------------------------------------------------------

def test_recommends_earliest_within_margin_in_epoch_order():
    scores = [ckpt(3, 0.80), ckpt(1, 0.70), ckpt(4, 0.81), ckpt(2, 0.79)]  # list order is not epoch order
    rec = recommend(scores, margin=0.02)
    assert (rec.name, rec.epoch, rec.all_warned) == ("char-000002", 2, False)
    assert "0.790" in rec.reasons[0] and "0.810" in rec.reasons[0] and "earliest" in rec.reasons[0]
    assert "0.02" in rec.rule and "earliest" in rec.rule
    assert any("no checkpoint has an overfitting warning" in r for r in rec.reasons)
    assert any("no no-LoRA baseline" in r for r in rec.reasons)
    assert recommend(scores, margin=0.0).epoch == 4


def test_recommend_skips_warned_checkpoints():
    scores = [ckpt(1, 0.70), ckpt(2, 0.80, nearest=0.97), ckpt(3, 0.79), ckpt(4, 0.82, nearest=0.99)]
    rec = recommend(scores)
    assert rec.epoch == 3  # best clean identity is its own 0.79; epochs 2 and 4 copy training images
    assert any("skipped 2 checkpoint(s)" in r and "epoch 2 (near-copy)" in r for r in rec.reasons)


def test_recommend_all_warned_falls_back_to_fewest_warnings():
    baseline = CheckpointScore(BASELINE_NAME, None, 0.55, 0.6, 0.30, 0.7)
    scores = [ckpt(1, 0.85, nearest=0.97, fidelity=0.20), ckpt(2, 0.80, nearest=0.96, fidelity=0.29),
              ckpt(3, 0.83, nearest=0.98, fidelity=0.29)]
    rec = recommend(scores, baseline=baseline)
    assert rec.epoch == 3 and rec.all_warned  # one warning each for 2 and 3; 3 has the better identity
    assert rec.reasons[0].startswith("every checkpoint has an overfitting warning")
    assert any(r.startswith("its warnings: near-copy") for r in rec.reasons)


def test_recommend_baseline_reasons_and_prompt_warning():
    baseline = CheckpointScore(BASELINE_NAME, None, 0.60, 0.5, 0.30, 0.7)
    scores = [ckpt(1, 0.61, fidelity=0.30), ckpt(2, 0.80, fidelity=0.20), ckpt(3, 0.79, fidelity=0.29)]
    rec = recommend(scores, baseline=baseline)
    assert rec.epoch == 3  # epoch 2 ignores the prompt (0.10 below the baseline)
    assert any("identity 0.600" in r and "+0.190" in r for r in rec.reasons)
    assert any("ignores the prompt" in r for r in rec.reasons)
    assert any("prompt fidelity 0.290 (no LoRA: 0.300)" in r for r in rec.reasons)
    little = recommend([ckpt(1, 0.605)], baseline=baseline)
    assert any("little gain" in r for r in little.reasons)
    with pytest.raises(CharLoRAError, match="no checkpoints"):
        recommend([])


def test_recommend_without_epochs_uses_list_order():
    scores = [ckpt(None, 0.80, name="b"), ckpt(None, 0.81, name="a")]
    assert recommend(scores).name == "b"


def test_table_and_report_are_json_ready(embedder):
    train = embedder.embed_images([noise_image(0), noise_image(1)])
    prompts = ["a photo of sks cat", "sks cat on the beach", "a photo of sks cat"]
    images = [noise_image(5), noise_image(6), noise_image(7)]
    base = score_images(embedder, BASELINE_NAME, images, train, prompts)
    s1 = score_images(embedder, "char-000001", images[:2] + [noise_image(0)], train, prompts, epoch=1, baseline=base)
    direct = score_checkpoint("char-000001", embedder.embed_images(images[:2] + [noise_image(0)]), train,
                              embedder.embed_texts(prompts), epoch=1)
    assert s1.prompt_fidelity == pytest.approx(direct.prompt_fidelity, abs=1e-6)
    assert s1.identity == pytest.approx(direct.identity, abs=1e-6)
    table = scores_table([s1], base)
    assert [r["name"] for r in table] == [BASELINE_NAME, "char-000001"] and table[0]["baseline"]
    report = score_report([s1], base, scorer=embedder.name)
    text = json.dumps(report, allow_nan=False)
    row = json.loads(text)["rows"][1]
    assert row["identity"] == round(s1.identity, 4) and row["epoch"] == 1
    assert row["warnings"] and row["warnings"][0].startswith("near-copy")  # noise_image(0) is a training image
    assert report["recommendation"]["name"] == "char-000001" and report["recommendation"]["all_warned"]
    assert score_report([], None)["recommendation"] is None


# --- loading a scorer -------------------------------------------------------------------------------

def tiny_clip_config():
    from transformers import CLIPConfig

    return CLIPConfig(text_config=dict(vocab_size=600, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                       num_attention_heads=4, bos_token_id=598, eos_token_id=599),
                      vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                                         num_hidden_layers=2, num_attention_heads=4),
                      projection_dim=32)


def test_load_saved_clip_model_folder(embedder, tmp_path):
    embedder.model.save_pretrained(tmp_path / "clip")
    embedder.tokenizer.save_pretrained(tmp_path / "clip")
    (tmp_path / "clip" / "preprocessor_config.json").write_text(json.dumps({"crop_size": 32, "size": 32}))
    loaded = load_embedder(str(tmp_path / "clip"))
    assert (loaded.processor.size["shortest_edge"], loaded.processor.crop_size["height"]) == (32, 32)
    images = [noise_image(1), noise_image(2)]
    assert loaded.has_text and loaded.name == str(tmp_path / "clip")
    assert torch.allclose(loaded.embed_images(images), embedder.embed_images(images), atol=1e-6)
    assert torch.allclose(loaded.embed_texts(["sks cat"]), embedder.embed_texts(["sks cat"]), atol=1e-6)


def test_load_vision_only_folder(tmp_path):
    from transformers import CLIPVisionModelWithProjection

    config = tiny_clip_config().vision_config
    config.projection_dim = 16
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "vision")
    loaded = load_embedder(str(tmp_path / "vision"))
    assert not loaded.has_text and loaded.embed_texts(["x"]) is None
    assert loaded.embed_images([noise_image(1)]).shape == (1, 16)


@pytest.mark.parametrize("legacy", [False, True])
def test_load_safety_checker_of_sd_folder(tmp_path, legacy):
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    checker = StableDiffusionSafetyChecker(tiny_clip_config()).eval()
    sd = tmp_path / "sd15"
    checker.save_pretrained(sd / "safety_checker")
    (sd / "model_index.json").write_text("{}")
    (sd / "feature_extractor").mkdir()  # SD 1.5's own preprocessing settings are used when present
    (sd / "feature_extractor" / "preprocessor_config.json").write_text(
        json.dumps({"crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 40}, "image_mean": [0.5] * 3}))
    if legacy:  # transformers < 5 wrote an extra `vision_model.` level, as the real SD 1.5 files have
        weights = sd / "safety_checker" / "model.safetensors"
        state = {k.replace("vision_model.", "vision_model.vision_model.", 1): v for k, v in load_file(weights).items()}
        save_file(state, weights)
    loaded = load_embedder(str(sd))
    assert not loaded.has_text and "safety checker" in loaded.name
    processor = loaded.processor  # SD 1.5's feature_extractor settings
    assert (processor.size["shortest_edge"], processor.crop_size["height"], list(processor.image_mean)) == (40, 32, [0.5] * 3)
    image = noise_image(4)
    with torch.no_grad():
        pooled = checker.vision_model(pixel_values=loaded.preprocess([image])).pooler_output
        expected = torch.nn.functional.normalize(checker.visual_projection(pooled), dim=-1)
    assert torch.allclose(loaded.embed_images([image]), expected, atol=1e-5)
    # The safety_checker folder itself works too.
    assert load_embedder(str(sd / "safety_checker")).dim == 32


def test_load_errors(tmp_path, no_network, monkeypatch):
    import huggingface_hub.constants

    missing = tmp_path / "no-such-folder"
    with pytest.raises(CharLoRAError, match="no-such-folder"):
        load_embedder(str(missing))
    with pytest.raises(CharLoRAError, match="not on this computer.*HF_HUB_OFFLINE.*safety_checker"):
        load_embedder("openai/clip-vit-large-patch14")  # offline in tests: must fail fast, no connection
    # Not in offline mode but no network: fail fast, without huggingface_hub's ~25 s of retries.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    started = time.monotonic()
    with pytest.raises(CharLoRAError, match="not on this computer.*cannot connect"):
        load_embedder("openai/clip-vit-large-patch14")
    assert time.monotonic() - started < 5
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(CharLoRAError, match="is a file.*--scorer toy"):
        load_embedder(str(tmp_path / "file.bin"))
    (tmp_path / "sd-no-checker").mkdir()
    (tmp_path / "sd-no-checker" / "model_index.json").write_text("{}")
    with pytest.raises(CharLoRAError, match="without safety_checker.*--scorer toy"):
        load_embedder(str(tmp_path / "sd-no-checker"))


# --- the scorer a user chooses (the Scorer field, score --scorer) -----------------------------------

OFFLINE_MESSAGE = (
    "the scorer openai/clip-vit-large-patch14 is not on this computer and the Hugging Face Hub cannot be reached "
    "({why}): run once online (it is downloaded once, into the Hugging Face cache), or download it into a folder "
    "(the CLIPModel and CLIPProcessor files: config.json, model.safetensors, the tokenizer files and "
    "preprocessor_config.json) and give that folder as the Scorer (--scorer FOLDER); a Stable Diffusion 1.5 "
    "diffusers folder with safety_checker/ works too, without a download; to try scoring offline, use the scorer "
    "'toy' (--scorer toy): a small CNN trained on CharLoRA's toy world, no download, its scores mean something for "
    "pictures of that world (the toy model's runs); 'tiny' is a random tiny CLIP for tests, its scores mean nothing")


def test_empty_scorer_uses_the_default_clip_when_the_base_model_has_none(tmp_path, monkeypatch):
    # The label and `score --help` promise openai/clip-vit-large-patch14 when the base model has no safety
    # checker: a single file, or a diffusers folder saved without safety_checker/.
    fetched = []
    monkeypatch.setattr(em, "_load_from_hub", lambda repo, device: fetched.append(repo) or tiny_clip())
    single = tmp_path / "v1-5-pruned-emaonly.safetensors"
    single.write_bytes(b"x")
    folder = tmp_path / "sd15"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    for base in (str(single), f'"{single}"', str(folder), "runwayml/stable-diffusion-v1-5", ""):
        assert em.scorer_for("", base).dim == 32
    assert fetched == ["openai/clip-vit-large-patch14"] * 5
    # "tiny" in any case, and given scorers as they are
    assert em.scorer_for(" Tiny ", str(single)).name.startswith("tiny random CLIP")
    em.scorer_for("someone/their-clip", str(single))
    assert fetched[-1] == "someone/their-clip"


def test_empty_scorer_uses_the_safety_checker_of_a_diffusers_base_model(tmp_path, monkeypatch):
    used = []
    monkeypatch.setattr(em, "load_embedder", lambda source, device="cpu": used.append(source) or "embedder")
    (tmp_path / "sd15" / "safety_checker").mkdir(parents=True)
    assert em.scorer_for("", str(tmp_path / "sd15")) == "embedder" and used == [str(tmp_path / "sd15")]


def test_default_scorer_offline_says_what_to_do(tmp_path, no_network, monkeypatch):
    import huggingface_hub.constants

    single = tmp_path / "v1-5-pruned-emaonly.safetensors"
    single.write_bytes(b"x")
    with pytest.raises(CharLoRAError) as err:  # HF_HUB_OFFLINE=1 (tests/conftest.py)
        em.scorer_for("", str(single))
    assert str(err.value) == OFFLINE_MESSAGE.format(why="offline mode: HF_HUB_OFFLINE is set")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # online mode, no network
    with pytest.raises(CharLoRAError) as err:
        em.scorer_for("", str(single))
    assert str(err.value) == OFFLINE_MESSAGE.format(why=f"cannot connect to {huggingface_hub.constants.ENDPOINT}")


def test_score_help_documents_the_scorer_values():
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "charlora", "score", "--help"], capture_output=True, text=True,
                            cwd=repo, timeout=60)
    help_text = " ".join(result.stdout.split()).replace("- ", "-")  # argparse wraps at hyphens
    assert result.returncode == 0
    for words in ("Empty: the base model's safety checker", "else openai/clip-vit-large-patch14",
                  "'toy' to score offline (a small CNN trained on the toy world",
                  "'tiny' for tests (a random tiny CLIP: its scores mean nothing)", "(default: '')"):
        assert words in help_text


def test_score_run_from_a_single_file_base_model_offline(tmp_path, no_network):
    # The case: Scorer empty, base model x.safetensors. It asks for openai/clip-vit-large-patch14 (here
    # offline) and stops with the message before rendering anything.
    from safetensors.torch import save_file

    from charlora.evaluate import ScoreSpec, score_run

    model = tmp_path / "model"
    model.mkdir()
    for stem, epoch in (("char-000001", "1"), ("char", "2")):
        save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 2)}, str(model / f"{stem}.safetensors"),
                  metadata={"ss_output_name": "char", "ss_epoch": epoch, "ss_session_id": "run1"})

    class NoRender:
        def render(self, *args):
            raise AssertionError("nothing is rendered before the scorer is loaded")

    spec = ScoreSpec(base_model=str(tmp_path / "v1-5-pruned-emaonly.safetensors"), lora_folder=str(model),
                     output_name="char", train_data_dir=str(tmp_path / "img"), output_dir=str(tmp_path / "out"),
                     prompts=["portrait of a girl"], seeds=[1, 2])
    with pytest.raises(CharLoRAError) as err:
        score_run(spec, renderer=NoRender())
    assert str(err.value) == OFFLINE_MESSAGE.format(why="offline mode: HF_HUB_OFFLINE is set")
    assert not (tmp_path / "out").exists()
