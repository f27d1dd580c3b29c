"""The app in a real browser (Debian's Chromium driven by Playwright): presets, sliders, a training run
that outlives its page, Stop, the VRAM panel. Screenshots of each tab go to test-artifacts/."""

import json
import re
import shutil
from pathlib import Path

from browser import (ARTIFACTS, app, browser, choose_preset, home, needs_chromium, number, open_page,  # noqa: F401
                     set_text, text)
from conftest import SEED_CONFIG

from dataset_helpers import pattern, save

REPO = Path(__file__).resolve().parents[1]
SEED = SEED_CONFIG
pytestmark = needs_chromium


def test_tabs_and_screenshots(open_page):
    from playwright.sync_api import expect

    page = open_page()
    ARTIFACTS.mkdir(exist_ok=True)
    for name in ("Dataset", "Parameters", "Training", "Evaluation"):
        tab = page.get_by_role("tab", name=name)
        expect(tab).to_be_visible()
        tab.click()
        expect(tab).to_have_attribute("aria-selected", "true")
        page.screenshot(path=str(ARTIFACTS / f"tab-{name.lower()}.png"), full_page=True)
        assert (ARTIFACTS / f"tab-{name.lower()}.png").stat().st_size > 10_000


def test_seed_config_loads_with_its_values(open_page, home):
    from playwright.sync_api import expect

    page = open_page()
    page.get_by_role("tab", name="Parameters").click()
    page.locator("#preset-import input[type=file]").set_input_files(str(SEED))
    expect(page.locator("#preset-message")).to_contain_text("Loaded", timeout=30_000)
    expect(page.locator("#preset-message")).not_to_contain_text("warning")
    expect(number(page, "network_dim")).to_have_value("128")
    expect(number(page, "network_alpha")).to_have_value("1")
    expect(number(page, "unet_lr")).to_have_value("0.0001")
    expect(number(page, "epoch")).to_have_value("12")
    expect(page.locator("#param-optimizer input")).to_have_value("AdamW8bit")
    expect(page.locator("#param-lr_scheduler input")).to_have_value("cosine")
    expect(text(page, "output_name")).to_have_value("wwaa-g13l-1")
    # the same file as a preset in the user's folder, chosen from the list
    (home / "presets").mkdir(exist_ok=True)
    shutil.copy(SEED, home / "presets" / "seed.json")
    page.get_by_role("button", name="Refresh list").click()
    choose_preset(page, "quick-tiny-demo (built-in)")
    page.locator("#preset-load").click()
    expect(number(page, "network_dim")).to_have_value("4", timeout=30_000)
    choose_preset(page, "seed")
    page.locator("#preset-load").click()
    expect(number(page, "network_dim")).to_have_value("128", timeout=30_000)
    expect(page.locator("#preset-message")).to_contain_text("Loaded preset")


def test_sliders_then_save_preset(open_page, home):
    from playwright.sync_api import expect

    page = open_page()
    page.get_by_role("tab", name="Parameters").click()
    for key, value in (("network_dim", "64"), ("network_alpha", "32"), ("unet_lr", "0.0002")):
        box = number(page, key)
        box.fill(value)
        box.press("Enter")
    page.locator("#preset-name textarea, #preset-name input").first.fill("my-girl")
    page.locator("#preset-save-as").click()
    expect(page.locator("#preset-message")).to_contain_text("Saved preset", timeout=30_000)
    saved = json.loads((home / "presets" / "my-girl.json").read_text())
    assert (saved["network_dim"], saved["network_alpha"], saved["unet_lr"]) == (64, 32.0, 0.0002)
    assert "wandb_api_key" not in saved


def test_train_outlives_its_page_and_stops(open_page, tiny_model, tmp_path):
    from playwright.sync_api import expect

    for i in range(4):
        save(tmp_path / "img" / "2_wwaa girl" / f"{i}.png", pattern(64, 64, i), "wwaa girl, smiling")
    out = tmp_path / "out"
    page = open_page()
    page.get_by_role("tab", name="Parameters").click()
    # open the closed "Advanced" panel first: its controls must be mounted before the preset's values
    # arrive, or a value typed right after mounting is overwritten by the pending update
    page.get_by_text("Advanced", exact=True).first.click()
    steps_box = number(page, "save_every_n_steps")
    expect(steps_box).to_be_visible()
    choose_preset(page, "quick-tiny-demo (built-in)")
    page.locator("#preset-load").click()
    expect(number(page, "network_dim")).to_have_value("4", timeout=30_000)
    set_text(page, "pretrained_model_name_or_path", str(tiny_model.single_file))
    set_text(page, "train_data_dir", str(tmp_path / "img"))
    set_text(page, "output_dir", str(out))
    number(page, "epoch").fill("500")
    number(page, "epoch").press("Tab")
    steps_box.fill("5")
    steps_box.press("Tab")
    expect(steps_box).to_have_value("5")

    page.get_by_role("tab", name="Training").click()
    expect(page.locator("#train-vram")).to_contain_text("no NVIDIA GPU detected")
    page.locator("#train-start").click()
    bar = page.locator("#train-progress-bar")
    expect(bar).to_have_attribute("data-step", re.compile(r"^([3-9]|\d\d+)$"), timeout=120_000)
    first = int(bar.get_attribute("data-step"))
    expect(page.locator("#train-status")).to_contain_text("loss")
    expect(page.locator("#train-files")).to_contain_text("tiny-demo-step00000005.safetensors", timeout=120_000)
    expect(page.locator("#train-loss")).not_to_contain_text("No data", timeout=30_000)
    expect(bar).not_to_have_attribute("data-step", str(first), timeout=60_000)  # it moves
    expect(page.locator("#train-start")).to_be_disabled()
    page.screenshot(path=str(ARTIFACTS / "training-running.png"), full_page=True)
    page.close()  # closing the browser tab must not stop the run

    again = open_page()
    again.get_by_role("tab", name="Training").click()
    expect(again.locator("#train-status")).to_contain_text("Running", timeout=30_000)
    expect(again.locator("#train-start")).to_be_disabled()
    expect(again.locator("#train-stop")).to_be_enabled()
    again.locator("#train-stop").click()
    expect(again.locator("#train-status")).to_contain_text("Stopped", timeout=120_000)
    expect(again.locator("#train-start")).to_be_enabled()
    from charlora.train import current_job

    snapshot = current_job().snapshot()
    assert snapshot.state == "stopped" and snapshot.step < snapshot.total_steps
    stopped_file = out / f"tiny-demo-step{snapshot.step:08d}.safetensors"
    assert stopped_file.is_file() and (out / f"tiny-demo-step{snapshot.step:08d}-state").is_dir()
    again.screenshot(path=str(ARTIFACTS / "training-stopped.png"), full_page=True)


def test_evaluation_grid_and_scores_from_a_finished_run(open_page, tiny_model, tmp_path):
    from playwright.sync_api import expect

    from charlora.params import load_config, normalize
    from charlora.train import train

    for i in range(3):
        save(tmp_path / "img" / "2_wwaa girl" / f"{i}.png", pattern(64, 64, i), "wwaa girl, smiling")
    values = dict(load_config(REPO / "presets" / "quick-tiny-demo.json").values,
                  pretrained_model_name_or_path=str(tiny_model.folder), train_data_dir=str(tmp_path / "img"),
                  output_dir=str(tmp_path / "model"), output_name="girl", epoch=3)
    assert train(normalize(values).values).status == "completed"

    page = open_page()
    page.get_by_role("tab", name="Evaluation").click()

    def fill(elem_id, value):
        box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
        box.fill(value)
        box.press("Tab")

    fill("eval-base-model", str(tiny_model.folder))
    fill("eval-lora-folder", str(tmp_path / "model"))
    fill("eval-name", "girl")
    fill("eval-prompt", "portrait of a girl <lora:girl:1>")
    fill("eval-x-values", "none, girl-000001, girl-000002, girl")
    fill("eval-y-values", "7,9")
    for elem_id, value in (("eval-steps", "2"), ("eval-width", "64"), ("eval-height", "64")):
        fill(elem_id, value)
    page.locator("#eval-grid").click()
    bar = page.locator("#eval-progress-bar")
    expect(bar).to_have_attribute("data-state", "completed", timeout=180_000)
    expect(bar).to_have_attribute("data-done", "8")
    expect(page.locator("#eval-image img")).to_be_visible(timeout=30_000)
    grids = list((tmp_path / "model" / "grids").glob("grid-*.png"))
    assert len([g for g in grids if "-x" not in g.name]) == 1

    fill("eval-train-dir", str(tmp_path / "img"))
    fill("eval-scorer", "tiny")
    fill("eval-score-seeds", "1,2")
    fill("eval-score-prompts", "portrait of a girl")
    page.locator("#eval-score").click()
    expect(page.locator("#eval-recommendation")).to_contain_text("Recommended", timeout=180_000)
    expect(page.locator("#eval-scores")).to_contain_text("girl-000001")
    expect(page.locator("#eval-scores")).to_contain_text("no LoRA")
    page.screenshot(path=str(ARTIFACTS / "evaluation.png"), full_page=True)


def test_vram_estimate_in_the_training_tab(open_page):
    from playwright.sync_api import expect

    page = open_page()
    page.get_by_role("tab", name="Training").click()
    page.locator("#train-estimate-button").click()
    expect(page.locator("#train-estimate")).to_contain_text("VRAM estimate", timeout=30_000)
    expect(page.locator("#train-estimate")).to_contain_text("optimizer state")
    expect(page.locator("#train-estimate")).to_contain_text("on this computer (no GPU) training runs on the CPU")


def test_dataset_problems_are_readable_at_1280_px(open_page, tmp_path):
    """Every problem sentence is shown whole: wrapped, never cut to fragments ("no caption ... caption")."""
    from playwright.sync_api import expect

    from charlora.dataset import check_dataset
    from charlora.params import normalize
    from dataset_helpers import build_user_dataset

    folders = build_user_dataset(tmp_path)
    problems = check_dataset(normalize({"train_data_dir": str(folders["img"])}).values).as_dict()["problems"]
    page = open_page()
    page.set_viewport_size({"width": 1280, "height": 1200})
    page.get_by_role("tab", name="Parameters").click()
    set_text(page, "train_data_dir", str(folders["img"]))
    page.get_by_role("tab", name="Dataset").click()
    page.locator("#dataset-check").click()
    table = page.locator("#dataset-problems")
    expect(table).to_contain_text(problems[0]["problem"], timeout=30_000)
    for problem in problems:
        expect(table).to_contain_text(problem["problem"])
    clipped = page.evaluate("""() => [...document.querySelectorAll('#dataset-problems td *')]
        .filter(e => e.children.length === 0 && e.textContent.trim() && e.scrollWidth > e.clientWidth + 1)
        .map(e => e.textContent)""")
    assert clipped == []
    page.screenshot(path=str(ARTIFACTS / "dataset-problems.png"), full_page=True)
