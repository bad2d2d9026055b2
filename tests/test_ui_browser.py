"""Headless Chromium drives the Dagster UI (`srlm ui`) of a materialized micro project: the lineage page
shows the iteration chain, an iteration's candidates page shows its metadata, the Launchpad refuses a bad
margin and relaunches the selection with a margin, and that run succeeds.

Needs Debian's `chromium` (installed by .ci/run) and the playwright package (dev extra); skipped without.
Set SRLM_SCREENSHOTS=<folder> to keep the screenshots (the README's pictures are made this way)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import run_micro_experiment

from srlm.warehouse import query_read_only

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (.ci/run installs it)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A materialized micro project and its Dagster UI on 127.0.0.1; yields (base url, home)."""
    directory = tmp_path_factory.mktemp("ui")
    config, home = run_micro_experiment(directory)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("SRLM_CONFIG", "SRLM_HOME", "DAGSTER_HOME")}
    log = open(directory / "ui.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "srlm.cli", "ui", "--config", str(config), "--port", str(port)],
        cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url + "/server_info", timeout=2)
                break
            except OSError as err:
                if proc.poll() is not None or time.time() > deadline:
                    log = (directory / "ui.log").read_text()[-3000:]
                    raise AssertionError("the Dagster UI did not start:\n" + log) from err
                time.sleep(1)
        yield url, home
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(60_000)
    yield page
    page.close()


def screenshot(page, name: str) -> None:
    folder = os.environ.get("SRLM_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"))


def test_lineage_page_shows_the_iteration_chain(ui, page):
    url, _ = ui
    page.goto(f"{url}/assets/srlm_likelihood_iter_1/checkpoint?view=lineage&lineageScope=upstream&lineageDepth=6")
    graph = page.locator(".react-flow, svg").first
    graph.wait_for()
    for group in ("data", "model", "srlm_iter_0", "srlm_iter_1", "srlm_likelihood_iter_1"):
        page.get_by_text(group, exact=True).first.wait_for()
    for node in ("instructions", "catalyst", "base", "candidates", "scores", "selected", "training_examples"):
        page.get_by_text(node, exact=True).first.wait_for()
    assert page.get_by_text("checkpoint", exact=True).count() >= 2  # M0 and M1 in the chain
    screenshot(page, "lineage")


def test_candidates_page_shows_its_metadata(ui, page):
    url, home = ui
    page.goto(f"{url}/assets/srlm_iter_1/candidates")
    page.get_by_text("Metadata", exact=True).first.wait_for()
    body = page.locator("body")
    for key in ("examples", "candidates", "mean_tokens", "shards_generated", "preview"):
        page.get_by_text(key, exact=True).first.wait_for()
    _, rows = query_read_only(home, "select count(*) from srlm_iter_1.candidates")
    assert "Row count" in body.inner_text()
    assert str(rows[0][0]) in body.inner_text()
    assert "M0 enriches the current rationale" in body.inner_text()
    screenshot(page, "candidates")


def test_summary_page_shows_the_accuracy_plot(ui, page):
    url, _ = ui
    page.goto(f"{url}/assets/eval/summary")
    row = page.locator("tr", has=page.get_by_text("plot", exact=True)).first
    row.get_by_text("Show Markdown").click()  # Dagster shows markdown metadata in a dialog
    plot = page.locator("img[src^='data:image/png']").first
    plot.wait_for()
    assert plot.evaluate("img => img.naturalWidth") > 100  # a real decoded picture, not a broken link
    screenshot(page, "summary")


def test_selected_page_tells_one_rationales_story(ui, page):
    url, home = ui
    page.goto(f"{url}/assets/srlm_likelihood_iter_1/selected")
    story = page.locator("tr", has=page.get_by_text("story", exact=True)).first  # shown inline: short markdown
    story.get_by_text("Its rationale, iteration by iteration").wait_for()
    _, rows = query_read_only(home, "select candidate_id, checkpoint_id from candidates where candidate_id = (select candidate_id from srlm_likelihood_iter_1.selected order by example_id limit 1)")
    story.scroll_into_view_if_needed()
    text = story.inner_text()
    assert rows[0][1] in text  # the checkpoint that wrote the kept rationale
    assert "Why it was kept at iteration 1" in text and "yes" in text and "It trains M1" in text
    screenshot(page, "story")


def open_launchpad(page, url: str, asset: str):
    page.goto(f"{url}/assets/{asset}")
    page.get_by_text("Materialize", exact=True).first.wait_for()
    buttons = page.locator("button")
    texts = buttons.all_inner_texts()
    buttons.nth(texts.index("Materialize") + 1).click()  # the menu next to Materialize
    page.get_by_text("Open launchpad").click()
    page.locator(".dagster-dialog .CodeMirror").first.wait_for()
    return page.locator(".dagster-dialog")


def set_config(page, text: str) -> None:
    page.evaluate("(t) => document.querySelector('.dagster-dialog .CodeMirror').CodeMirror.setValue(t)", text)


def test_launchpad_relaunches_selection_with_a_margin(ui, page):
    url, home = ui
    dialog = open_launchpad(page, url, "srlm_likelihood_iter_1/selected")
    config = page.evaluate("document.querySelector('.dagster-dialog .CodeMirror').CodeMirror.getValue()")
    assert "ops: {}" in config  # the experiment's margin (none) is the default: nothing to set

    def with_margin(value: str) -> str:
        return config.replace("ops: {}", "ops: {srlm_likelihood_iter_1__selected: {config: {margin: %s}}}" % value)

    set_config(page, with_margin("wide"))
    dialog.get_by_text("margin", exact=False).first.wait_for()
    dialog.get_by_text("Float", exact=False).first.wait_for()  # refused, with the type it wants
    set_config(page, with_margin("100.0"))
    dialog.get_by_text("No errors").wait_for()
    screenshot(page, "launchpad")
    dialog.locator("button", has_text="Materialize").last.click()

    page.wait_for_url("**/runs/**")
    deadline = time.time() + 300
    while not page.get_by_text("Success", exact=True).count():
        assert not page.get_by_text("Failure", exact=True).count(), "the run launched from the UI failed"
        assert time.time() < deadline, "the run launched from the UI did not finish"
        page.wait_for_timeout(2000)
    screenshot(page, "run")
    # no candidate beats its parent's score by 100 nats: the relaunched selection keeps none
    _, rows = query_read_only(home, "select count(*) from srlm_likelihood_iter_1.selected")
    assert rows == [(0,)]
