"""The user's whole story, walked in Chromium through the UI only, as a person clicks it.

Import the Kohya config, Prepare a folder of captioned pictures, check it, move dim/alpha/lr, save a
preset and load it back in a new page, Start, close the page, reopen (settings, progress and loss
curve shown), Stop, Resume, finish, the chk x CFG grid over every epoch including the last, a seed
batch with a checkpoint named as the grid lists it, score, keep. Each step asserts what the user
sees; a screenshot of each tab goes to the test's temp folder (and to test-artifacts/story/).
"""

import re
import shutil

import pytest

from browser import ARTIFACTS, app, browser, choose_preset, home, needs_chromium, number, open_page  # noqa: F401
from browser import field, fill, set_text, text
from conftest import SEED_CONFIG

from dataset_helpers import pattern, save

pytestmark = [*needs_chromium, pytest.mark.slow]  # about 2 minutes

NAME = "wwaa-girl"
EPOCHS = 4
PICTURES = 14
NO_TRIGGER = (3, 8, 12)  # captions the user wrote without the trigger word


def user_pictures(folder):
    for i in range(1, PICTURES + 1):
        caption = "a girl in a red coat" if i in NO_TRIGGER else f"wwaa girl, smiling, picture {i}"
        save(folder / f"girl_{i:02d}.png", pattern(64, 64, i), caption)


def set_number(page, key, value):
    box = number(page, key)
    box.fill(str(value))
    box.press("Enter")


def pick(page, elem_id, label):
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=label, exact=True).click()


def curve_points(page, series="loss"):
    line = page.locator(f'#train-loss-chart polyline[data-series="{series}"]')
    return int(line.get_attribute("data-points")) if line.count() else 0


class Shots:
    def __init__(self, folder):
        self.folders = [folder, ARTIFACTS / "story"]
        for f in self.folders:
            f.mkdir(parents=True, exist_ok=True)
        self.taken = []

    def __call__(self, page, name):
        path = self.folders[0] / f"{len(self.taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        shutil.copy(path, self.folders[1] / path.name)
        self.taken.append(path)


def test_the_whole_story(open_page, tiny_model, tmp_path, home):  # noqa: F811
    from playwright.sync_api import expect

    from charlora.train import current_job

    shot = Shots(tmp_path / "screenshots")
    pictures, project = tmp_path / "pictures", tmp_path / "project"
    user_pictures(pictures)

    # ---- Parameters: the user's own Kohya config, as it is
    page = open_page()
    page.get_by_role("tab", name="Parameters").click()
    page.locator("#preset-import input[type=file]").set_input_files(str(SEED_CONFIG))
    expect(page.locator("#preset-message")).to_contain_text("Loaded", timeout=30_000)
    expect(number(page, "network_dim")).to_have_value("128")
    expect(page.locator("#param-network_dim")).to_contain_text("Network rank (dimension)")  # a human label...
    expect(page.locator("#param-network_dim")).to_contain_text("network_dim")  # ...and Kohya's key

    # ---- Dataset: Prepare a folder of captioned pictures
    page.get_by_role("tab", name="Dataset").click()
    page.get_by_text("Prepare a dataset from a folder of pictures").click()
    fill(page, "prep-images", str(pictures))
    fill(page, "prep-dest", str(project))
    page.locator("#prep-run").click()
    expect(page.locator("#prep-message")).to_contain_text("enter a trigger word", timeout=30_000)
    fill(page, "prep-trigger", "wwaa")
    fill(page, "prep-class", "girl")
    page.locator("#prep-run").click()
    message = page.locator("#prep-message")
    expect(message).to_contain_text(f"Copied {PICTURES} images", timeout=30_000)
    expect(message).to_contain_text(f"{PICTURES} captions")
    expect(message).to_contain_text(f"added the trigger word to {len(NO_TRIGGER)}")
    concept = project / "img" / "10_wwaa girl"
    # saved as the config's caption extension: Kohya reads "" as ".caption"
    assert (concept / "girl_03.caption").read_text().startswith("wwaa, a girl")
    assert "picture 5" in (concept / "girl_05.caption").read_text()

    # the config's Windows regularisation folder is reported, not a crash; clear it and check again
    page.locator("#dataset-check").click()
    expect(page.locator("#dataset-problems")).to_contain_text("reg_data_dir", timeout=30_000)
    page.get_by_role("tab", name="Parameters").click()
    set_text(page, "reg_data_dir", "")
    page.get_by_role("tab", name="Dataset").click()
    page.locator("#dataset-check").click()
    summary = page.locator("#dataset-summary")
    expect(summary).to_contain_text(f"captions {PICTURES} found / 0 missing", timeout=30_000)
    expect(summary).to_contain_text(f"{PICTURES * 10} training samples per epoch")
    expect(page.locator("#dataset-problems")).not_to_contain_text("reg_data_dir")
    shot(page, "dataset")

    # ---- Parameters: a model on this computer, a small run, dim/alpha/lr moved, saved as a preset
    page.get_by_role("tab", name="Parameters").click()
    expect(text(page, "train_data_dir")).to_have_value(str(project / "img"))
    expect(text(page, "output_name")).to_have_value(NAME)
    set_text(page, "pretrained_model_name_or_path", str(tiny_model.single_file))
    set_text(page, "max_resolution", "64,64")
    set_number(page, "epoch", EPOCHS)
    set_number(page, "network_dim", 8)
    set_number(page, "network_alpha", 4)
    set_number(page, "unet_lr", 0.0005)
    page.get_by_text("Samples", exact=True).first.click()
    set_text(page, "sample_prompts", "wwaa girl, smiling --w 64 --h 64 --s 2 --d 1")
    set_number(page, "sample_every_n_epochs", 1)
    page.locator("#preset-name textarea, #preset-name input").first.fill("wwaa-story")
    page.locator("#preset-save-as").click()
    expect(page.locator("#preset-message")).to_contain_text("Saved preset", timeout=30_000)
    page.locator("#preset-save-as").click()  # again: Save as never overwrites
    expect(page.locator("#preset-message")).to_contain_text("already exists", timeout=30_000)
    shot(page, "parameters")
    page.close()

    # ---- a new page lists the preset without "Refresh list", and loads it back
    page = open_page()
    page.get_by_role("tab", name="Parameters").click()
    choose_preset(page, "wwaa-story")
    page.locator("#preset-load").click()
    expect(number(page, "network_dim")).to_have_value("8", timeout=30_000)
    expect(text(page, "pretrained_model_name_or_path")).to_have_value(str(tiny_model.single_file))

    # ---- Training: Start, the curve draws from the first points
    page.get_by_role("tab", name="Training").click()
    page.locator("#train-start").click()
    bar = page.locator("#train-progress-bar")
    expect(bar).to_have_attribute("data-step", re.compile(r"^([3-9]|\d\d+)$"), timeout=180_000)
    expect(page.locator("#train-loss-chart polyline[data-series='loss']")).to_have_attribute(
        "data-points", re.compile(r"^([2-9]|\d\d+)$"), timeout=30_000)
    expect(page.locator("#train-status")).to_contain_text("ETA")
    page.close()  # closing the tab never stops training

    # ---- reopen: the run's settings, progress and curve are there
    page = open_page()
    page.get_by_role("tab", name="Training").click()
    expect(page.locator("#train-status")).to_contain_text("Running", timeout=30_000)
    expect(page.locator("#train-loss-chart polyline[data-series='loss']")).to_have_attribute(
        "data-points", re.compile(r"^[1-9]\d*$"), timeout=30_000)
    shot(page, "training-reattached")
    page.get_by_role("tab", name="Parameters").click()
    expect(text(page, "output_dir")).to_have_value(str(project / "model"))
    expect(number(page, "network_dim")).to_have_value("8")
    page.get_by_role("tab", name="Training").click()

    # ---- Stop: no stale "Stopping..." or ETA; Resume continues, with the loss history
    page.locator("#train-stop").click()
    status = page.locator("#train-status")
    expect(status).to_contain_text("Stopped", timeout=120_000)
    expect(page.locator("#train-message")).not_to_contain_text("Stopping")
    expect(status).not_to_contain_text("ETA")
    expect(page.locator("#train-resume")).to_be_enabled()
    stopped = current_job().snapshot()
    assert stopped.state == "stopped" and 0 < stopped.step < stopped.total_steps
    expect(page.locator("#train-loss-chart polyline[data-series='loss']")).to_have_attribute(
        "data-points", str(stopped.step))
    page.locator("#train-resume").click()
    expect(status).to_contain_text("Completed", timeout=600_000)
    done = current_job().snapshot()
    assert done.step == done.total_steps == PICTURES * 10 * EPOCHS
    assert [p[0] for p in done.losses] == list(range(1, done.total_steps + 1))  # no gap at the resume
    expect(page.locator("#train-loss-chart polyline[data-series='loss']")).to_have_attribute(
        "data-points", str(done.total_steps), timeout=30_000)
    expect(page.locator("#train-files")).to_contain_text(f"{NAME}.safetensors")
    expect(page.locator("#train-files")).to_contain_text("Logs (TensorBoard)")
    expect(page.locator("#train-samples")).to_contain_text(f"epoch {EPOCHS} · wwaa girl, smiling")
    expect(page.locator("#train-resume")).to_be_disabled()
    shot(page, "training-finished")

    # ---- Evaluation: chk x CFG over every epoch, the last one included
    page.get_by_role("tab", name="Evaluation").click()
    page.get_by_role("button", name="Use the Parameters tab's run").click()
    expect(field(page, "eval-name")).to_have_value(NAME, timeout=30_000)
    fill(page, "eval-prompt", f"portrait of wwaa girl <lora:{NAME}-chk:1>")
    pick(page, "eval-x-kind", "Prompt S/R")
    fill(page, "eval-x-values", "chk," + ",".join(str(e) for e in range(1, EPOCHS + 1)))
    fill(page, "eval-y-values", "7,8")
    for elem_id, value in (("eval-steps", "2"), ("eval-width", "64"), ("eval-height", "64")):
        fill(page, elem_id, value)
    page.locator("#eval-grid").click()
    progress = page.locator("#eval-progress-bar")
    cells = (EPOCHS + 1) * 2
    expect(progress).to_have_attribute("data-state", "completed", timeout=300_000)
    expect(progress).to_have_attribute("data-done", str(cells))
    message = page.locator("#eval-message")
    expect(message).to_contain_text("Saved to")
    expect(message).to_contain_text(f"{NAME}.safetensors")  # the last epoch's column used the final file
    expect(message).to_contain_text("the 'chk' cells render without a LoRA")  # the reference, not a typo
    expect(message).not_to_contain_text("not found")
    expect(page.locator("#eval-image img")).to_be_visible(timeout=30_000)
    shot(page, "evaluation-grid")

    # ---- a seed batch with a checkpoint named as the grid lists it
    page.get_by_text("Seed batch", exact=True).click()
    fill(page, "eval-seed-lora", f"{NAME}-000002")
    fill(page, "eval-seed-list", "1-4")
    page.locator("#eval-seeds").click()
    expect(progress).to_have_attribute("data-state", "completed", timeout=300_000)
    expect(progress).to_have_attribute("data-done", "4")
    expect(message).to_contain_text(f"{NAME}-000002-seeds")

    # ---- score, recommend, keep
    fill(page, "eval-scorer", "tiny")
    fill(page, "eval-score-seeds", "1,2")
    fill(page, "eval-score-prompts", "portrait of wwaa girl")
    page.locator("#eval-score").click()
    expect(page.locator("#eval-recommendation")).to_contain_text("Recommended", timeout=300_000)
    expect(page.locator("#eval-scores")).to_contain_text(f"{NAME}-000001")
    expect(page.locator("#eval-image img")).to_have_count(0)  # the seed sheet is not left under the scores
    lora_dir = tmp_path / "webui" / "models" / "Lora"
    fill(page, "eval-keep-to", str(lora_dir))
    page.locator("#eval-keep").click()
    expect(page.locator("#eval-keep-message")).to_contain_text("Copied to", timeout=30_000)
    assert len(list(lora_dir.glob("*.safetensors"))) == 1
    shot(page, "evaluation-scores")
    assert len(shot.taken) == 6 and all(p.stat().st_size > 20_000 for p in shot.taken)
