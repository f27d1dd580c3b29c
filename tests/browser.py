"""Browser fixtures for the app's tests: the app launched in-process on a free port (fresh training and
evaluation jobs, a fresh CHARLORA_HOME), Debian's Chromium through Playwright, pages whose every request
must stay on 127.0.0.1, and the few selectors the tests share."""

import shutil
import urllib.parse
from pathlib import Path

import pytest
from conftest import free_port

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

# every browser test carries the `browser` marker (a quick run leaves them out: pytest -m "not browser")
needs_chromium = [pytest.mark.browser,
                  pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (bash setup.sh --dev)")]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("charlora-home")


@pytest.fixture(scope="module")
def app(home, tiny_model, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("CHARLORA_HOME", str(home))
    from charlora.evaluate import job as evaluation_job
    from charlora.train import job as training_job
    from charlora.ui.app import build_app, serve

    # a fresh process's jobs: what an earlier module's run left must not show in this module's pages
    mp.setattr(training_job, "_JOB", training_job.TrainingJob())
    mp.setattr(evaluation_job, "_JOB", evaluation_job.EvaluationJob())
    demo = build_app()
    port = free_port()
    serve(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    from charlora.train import current_job

    current_job().stop(save=False)
    current_job().wait(timeout=120)
    demo.close()
    mp.undo()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser, app):
    """Open the app in a new page; every request the page makes must stay on 127.0.0.1."""
    from playwright.sync_api import expect

    outside = []
    pages = []

    def guard(route):
        host = urllib.parse.urlparse(route.request.url).hostname
        if host not in ("127.0.0.1", "localhost") and not route.request.url.startswith(("data:", "blob:")):
            outside.append(route.request.url)
            return route.abort()
        return route.continue_()

    def opener():
        page = browser.new_page(viewport={"width": 1300, "height": 1400})
        page.route("**/*", guard)
        page.goto(app)
        expect(page.get_by_role("tab", name="Parameters")).to_be_visible(timeout=60_000)
        from charlora.train import current_job

        if current_job().snapshot().values:
            # a new page fills its Parameters tab from the run; wait for that before typing, or it overwrites
            page.get_by_role("tab", name="Parameters").click()
            expect(page.locator("#preset-message")).to_contain_text("Showing the settings", timeout=60_000)
        pages.append(page)
        return page

    yield opener
    for page in pages:
        if not page.is_closed():
            page.close()
    assert outside == [], f"requests left 127.0.0.1: {outside}"


def number(page, key):
    return page.locator(f"#param-{key} input[type=number]")


def field(page, elem_id):
    """The text box of the component with this elem_id."""
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def fill(page, elem_id, value):
    box = field(page, elem_id)
    box.fill(value)
    box.press("Tab")  # a change counts once the box loses focus


def text(page, key):
    return field(page, f"param-{key}")


def set_text(page, key, value):
    fill(page, f"param-{key}", value)


def choose_preset(page, label):
    box = page.locator("#preset-choice input")
    box.click()
    page.get_by_role("option", name=label, exact=True).click()
