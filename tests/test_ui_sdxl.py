"""SDXL in the browser: choosing an SDXL base model turns sdxl on and shows the SDXL-only settings (an SD 1.5
model turns it off and hides them), the SDXL presets load, and the VRAM estimate speaks of SDXL.
Screenshots go to test-artifacts/."""

from browser import ARTIFACTS, app, browser, choose_preset, home, needs_chromium, open_page, set_text  # noqa: F401

pytestmark = needs_chromium


def test_choosing_an_sdxl_model_turns_sdxl_on_and_shows_its_settings(open_page, tiny_model, tiny_sdxl):
    from playwright.sync_api import expect

    page = open_page()
    page.get_by_role("tab", name="Parameters").click()
    sdxl = page.locator("#param-sdxl input[type=checkbox]")
    cache = page.locator("#param-sdxl_cache_text_encoder_outputs")
    expect(sdxl).not_to_be_checked()
    expect(cache).to_be_hidden()

    set_text(page, "pretrained_model_name_or_path", str(tiny_sdxl.single_file))
    expect(sdxl).to_be_checked(timeout=30_000)
    expect(cache).to_be_visible()
    expect(page.locator("#preset-message")).to_contain_text("The base model is SDXL")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "parameters-sdxl.png"), full_page=True)

    page.locator("#param-estimate-button").click()
    expect(page.locator("#param-estimate")).to_contain_text("text encoders", timeout=30_000)

    set_text(page, "pretrained_model_name_or_path", str(tiny_model.folder))
    expect(sdxl).not_to_be_checked(timeout=30_000)
    expect(cache).to_be_hidden()
    expect(page.locator("#preset-message")).to_contain_text("The base model is SD 1.5: sdxl is now off")


def test_the_sdxl_presets_load(open_page):
    from playwright.sync_api import expect

    page = open_page()
    page.get_by_role("tab", name="Parameters").click()
    choose_preset(page, "sdxl-character-12gb-lowvram (built-in)")
    page.locator("#preset-load").click()
    expect(page.locator("#preset-message")).to_contain_text("Loaded preset", timeout=30_000)
    expect(page.locator("#param-sdxl input[type=checkbox]")).to_be_checked()
    expect(page.locator("#param-sdxl_cache_text_encoder_outputs input[type=checkbox]")).to_be_checked()
    expect(page.locator("#param-max_resolution textarea, #param-max_resolution input").first).to_have_value(
        "1024,1024")
    page.locator("#param-estimate-button").click()
    expect(page.locator("#param-estimate")).to_contain_text("SDXL's sizes", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "parameters-sdxl-preset.png"), full_page=True)
