"""The README's evaluation demo as a user lives it: the example suite run twice, a model gets
worse in between, and the HTML report names the items that flipped. The report is opened in
headless Chromium: it renders, its charts are there, nothing errors and nothing is fetched.
A screenshot is kept in ``test-artifacts/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batcher import Client
from batcher.testing import FakeProvider, ModelBehaviour

pytestmark = pytest.mark.acceptance

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "capitals" / "suite.yaml"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FLIPPED = ["germany", "italy", "spain", "japan", "kenya", "canada", "australia"]


def batcher(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batcher.cli", *args],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's package)")
        pytest.skip("chromium is not installed: apt-get install -y chromium")
    return path


@pytest.fixture
def example_models(fake_provider: FakeProvider) -> Iterator[FakeProvider]:
    """The example's models as its demo configures the fake provider; put back afterwards."""
    behaviours = {
        "claude-3-5-haiku-latest": ModelBehaviour(answer="Paris"),
        "my-vllm-model": ModelBehaviour(fail_first_n=3, fail_first_status=503),
        "gpt-4o": ModelBehaviour(answer="The answer names the city.\nVERDICT: PASS"),
    }
    for model, behaviour in behaviours.items():
        fake_provider.set_behaviour(model, behaviour)
    try:
        yield fake_provider
    finally:
        for model in (*behaviours, "gpt-4o-mini"):
            fake_provider.set_behaviour(model, None)


def test_report_names_flipped_items_and_renders_in_chromium(
    client: Client, example_models: FakeProvider, cluster_env: dict[str, str], chromium: str, tmp_path: Path
) -> None:
    first = batcher(cluster_env, "eval", "run", str(EXAMPLE), "--fail-on-regression")
    assert first.returncode == 0, first.stderr
    # Overnight, gpt-4o-mini starts answering "Paris" to everything; claude gets better.
    example_models.set_behaviour("gpt-4o-mini", ModelBehaviour(answer="Paris"))
    example_models.set_behaviour("claude-3-5-haiku-latest", None)
    second = batcher(cluster_env, "eval", "run", str(EXAMPLE), "--fail-on-regression")
    assert second.returncode == 1, second.stderr

    ARTIFACTS.mkdir(exist_ok=True)
    report = ARTIFACTS / "eval-report.html"
    written = batcher(cluster_env, "eval", "report", str(EXAMPLE), "-o", str(report))
    assert written.returncode == 0, written.stderr
    assert "(regression flagged)" in written.stdout
    html = report.read_text()
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")

    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    fetched: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = browser.new_page()
            page.on(
                "console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: fetched.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
            page.goto(report.as_uri())
            page.wait_for_load_state("load")

            assert page.title() == "capitals — evaluation report"
            assert page.locator("#regression-badge").is_visible()
            assert page.locator("#chart-scores rect.bar").count() == 3
            assert page.locator("#chart-trend circle.point").count() == 6  # 3 models x 2 runs
            assert page.locator("#chart-scores").bounding_box()["width"] > 300  # type: ignore[index]
            flips = flipped_items(page)
            assert flips["gpt-4o-mini"]["newly-failing"] == FLIPPED
            assert flips["claude-3-5-haiku-latest"]["fixed"] == FLIPPED
            assert "vllm" not in flips
            regressed = page.locator("#regressions tr.regressed td").first.inner_text()
            assert regressed == "gpt-4o-mini"
            page.screenshot(path=str(ARTIFACTS / "eval-report.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert fetched == []
    assert (ARTIFACTS / "eval-report.png").stat().st_size > 10_000


def flipped_items(page: Any) -> dict[str, dict[str, list[str]]]:
    """``{model: {"newly-failing": [item ids], "fixed": [...]}}`` as the report shows them."""
    found: dict[str, dict[str, list[str]]] = {}
    for table in page.locator("#regressions table.flips").all():
        model = table.get_attribute("data-model")
        for row in table.locator("tr.flip").all():
            kind = "newly-failing" if "newly-failing" in (row.get_attribute("class") or "") else "fixed"
            found.setdefault(model, {"newly-failing": [], "fixed": []})[kind].append(
                row.locator("td.item-id").inner_text()
            )
    return found
