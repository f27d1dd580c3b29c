"""The same config and seed give the same LoRA, before and after a change to the code (issue 17).

`tests/fixtures/reference-run/` holds the LoRA file a short run on the tiny model saved (UNet + text
encoder, cosine with warm-up, gradient accumulation, batch 2, noise offset, min-SNR, fp32 file) when the
fixture was written. This test trains the same run and compares every tensor. On the torch version and CPU
kernel level the fixture was written with, they must be bit for bit equal; elsewhere (other kernels round
differently) equal to 1e-5, which still catches any change in what the trainer does (a wrong scale, lr,
schedule, noise or data order moves the weights by far more).

A deliberate change of behaviour rewrites the fixture, in the same commit, with:

    .venv/bin/python tests/test_reference_run.py --write
"""

import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "reference-run"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from dataset_helpers import pattern, save  # noqa: E402

OVERRIDES = dict(
    epoch=2, seed=4321, network_dim=4, network_alpha=2.0, unet_lr=2e-3, text_encoder_lr=1e-3, learning_rate=1e-3,
    lr_scheduler="cosine", lr_warmup=25, optimizer="AdamW", train_batch_size=2, gradient_accumulation_steps=2,
    noise_offset=0.05, min_snr_gamma=5.0, save_precision="float", save_every_n_epochs=0, output_name="reference",
)


def environment() -> dict:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def train_reference(model_file: Path, work: Path) -> Path:
    from charlora.params import load_config, normalize
    from charlora.train import train

    for i in range(4):
        save(work / "img" / "2_wwaa girl" / f"{i}.png", pattern(64, 64, 100 + i), "wwaa girl, smiling")
    values = dict(load_config(HERE.parent / "presets" / "quick-tiny-demo.json").values,
                  pretrained_model_name_or_path=str(model_file), train_data_dir=str(work / "img"),
                  output_dir=str(work / "out"), **OVERRIDES)
    result = train(normalize(values).values)
    assert result.status == "completed", result.message
    return work / "out" / "reference.safetensors"


def test_same_config_and_seed_give_the_same_lora(tiny_model, tmp_path):
    made = load_file(str(train_reference(tiny_model.single_file, tmp_path)))
    expected = load_file(str(FIXTURE / "reference.safetensors"))
    assert made.keys() == expected.keys()
    written_with = json.loads((FIXTURE / "environment.json").read_text())
    if written_with == environment():
        different = [k for k in expected if not torch.equal(made[k], expected[k])]
        assert different == [], f"{len(different)} tensors differ from the reference run, e.g. {different[:3]}"
    else:
        for key in expected:
            torch.testing.assert_close(made[key], expected[key], rtol=1e-5, atol=1e-7, msg=key)
    with safe_open(str(FIXTURE / "reference.safetensors"), "pt") as fh:
        assert fh.metadata()["ss_seed"] == str(OVERRIDES["seed"])


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import shutil
    import tempfile

    from charlora.models.tiny import make_tiny_model

    torch.set_num_threads(1)  # as the tests run
    with tempfile.TemporaryDirectory() as folder:
        tiny = make_tiny_model(Path(folder) / "tiny")
        made = train_reference(tiny.single_file, Path(folder))
        FIXTURE.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(made, FIXTURE / "reference.safetensors")
    (FIXTURE / "environment.json").write_text(json.dumps(environment(), indent=1) + "\n")
    print(f"wrote {FIXTURE}")
