"""The web UI in a real browser: Debian's chromium, driven by Playwright, against
``statestream web`` served by uvicorn on a free port.

Never ``playwright install``: the browser is the system's (``apt-get install chromium``). Without
it the tests skip, and fail when ``CI=true``. With ``STATESTREAM_SCREENSHOTS=1`` they write one
screenshot of each page to ``docs/``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import web_browser_app
from statestream import RunState
from statestream._core.records import Event, ParkedEvent
from web_support import TOKEN, Order

TESTS = Path(__file__).parent
DOCS = TESTS.parent / "docs"
CHROMIUM = shutil.which("chromium")

if CHROMIUM is None:
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is missing (apt-get install -y chromium)", pytrace=False)
    pytest.skip("chromium is missing: apt-get install -y chromium", allow_module_level=True)

playwright_api = pytest.importorskip("playwright.async_api")

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, tmp_path: Path) -> None:
        self.db = str(tmp_path / "web.db")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp_path / "web.log", "wb")  # noqa: SIM115 - closed in stop()
        env = {
            **os.environ,
            "WEB_TEST_DB": self.db,
            "STATESTREAM_WEB_TOKEN": TOKEN,
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        }
        env.pop("STATESTREAM_WEB_READ_TOKEN", None)
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "statestream.cli", "web", "web_browser_app:wf"),
                *("--port", str(self.port), "--open-reads", "--title", "statestream · orders"),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/api/runs", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = Path(self.log.name).read_text(errors="replace")
                pytest.fail(f"statestream web did not start:\n{log}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # our own child, by PID
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
async def seeded(tmp_path: Path) -> AsyncIterator[tuple[Any, list[str]]]:
    """The workflow on the server's SQLite file, with runs and a parked event."""
    wf, db = web_browser_app.build(str(tmp_path / "web.db"))
    ids = [
        await wf.trigger(f"order-{1000 + i}", initial=Order(f"o{i}", 25 * (i + 1), items=["book"]))
        for i in range(6)
    ]
    ids.append(await wf.trigger("<script>alert('x')</script>", initial=Order("x", 1)))
    await wf.pause(ids[2], "address needs checking")
    event = Event(41, "orders-run-state-change", ids[2], 3, {}, datetime.now(UTC))
    await wf.store.park(
        ParkedEvent(
            "orders-pause-hook:orders-run-state-change:41",
            wf.name,
            "orders-pause-hook",
            event,
            "ConnectionError: the mail server did not answer",
            10,
            datetime.now(UTC),
        )
    )
    try:
        yield wf, ids
    finally:
        await db.close()


@pytest.fixture
def server(tmp_path: Path, seeded: Any) -> Iterator[Server]:
    s = Server(tmp_path)
    s.wait_ready()
    try:
        yield s
    finally:
        s.stop()


async def shot(page: Any, name: str) -> None:
    if os.environ.get("STATESTREAM_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        await page.screenshot(path=str(DOCS / f"web-{name}.png"), full_page=True)


async def test_list_open_pause_resume_graph_and_refused_write(
    server: Server, seeded: tuple[Any, list[str]]
) -> None:
    wf, ids = seeded
    run_id = ids[-2]
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            problems: list[str] = []
            page.on(
                "console",
                lambda m: problems.append(m.text) if m.type in ("error", "warning") else None,
            )
            page.on("pageerror", lambda exc: problems.append(str(exc)))

            # The runs list, newest first; the foreign ID "<script>..." shows as text
            await page.goto(server.url + "/")
            rows = page.locator("table.runs tbody tr")
            assert await rows.count() == len(ids)
            await playwright_api.expect(
                page.get_by_text("<script>alert('x')</script>", exact=True)
            ).to_be_visible()
            # A run triggered meanwhile appears without a reload (the page polls)
            new_id = await wf.trigger("order-live", initial=Order("live", 5))
            await playwright_api.expect(page.get_by_text("order-live")).to_be_visible(
                timeout=10_000
            )
            await shot(page, "runs")

            # Without the token, a write is refused and nothing changes
            await page.goto(server.url + f"/runs/{run_id}")
            await page.click('a[data-action="pause"]')
            await page.fill('input[name="reason"]', "no token")
            await page.click("#confirm")
            await playwright_api.expect(page.locator("h1")).to_contain_text("403")
            assert (await wf.get(run_id)).run_state is RunState.INITIATED

            # Sign in, open a run, pause it (with the confirmation) and resume it
            await page.goto(server.url + "/login")
            await shot(page, "login")
            await page.fill('input[name="token"]', TOKEN)
            await page.click("#login")
            await playwright_api.expect(page.locator(".badge.write")).to_be_visible()
            await page.click(f'a[href="/runs/{run_id}"]')
            await playwright_api.expect(page.locator("h1")).to_contain_text("order-1005")
            await page.click('a[data-action="pause"]')
            await page.fill('input[name="reason"]', "customer called <b>support</b>")
            await shot(page, "confirm")
            await page.click("#confirm")
            state = page.locator('[data-field="run_state"]')
            await playwright_api.expect(state).to_have_text("Paused")
            await playwright_api.expect(page.locator(".notice")).to_have_text("The run is paused.")
            run = await wf.get(run_id)
            assert run.run_state is RunState.PAUSED
            assert run.run_state_reason == "customer called <b>support</b>"
            await shot(page, "run")
            await page.click('a[data-action="resume"]')
            await page.click("#confirm")
            await playwright_api.expect(state).to_have_text("Running")
            assert (await wf.get(run_id)).run_state is RunState.RUNNING
            # A change made elsewhere shows on the open page without a reload
            await wf.pause(run_id, "paused from elsewhere")
            await playwright_api.expect(state).to_have_text("Paused", timeout=10_000)

            # The graph: Mermaid draws an SVG, with the counts on it
            await page.goto(server.url + "/graph")
            svg = page.locator("#graph svg")
            await playwright_api.expect(svg).to_be_visible(timeout=15_000)
            await playwright_api.expect(svg).to_contain_text("Created (8)")
            await shot(page, "graph")

            # Parked events, with a retry button
            await page.goto(server.url + "/parked")
            await playwright_api.expect(page.get_by_text("the mail server")).to_be_visible()
            await shot(page, "parked")
            await page.click("table.parked button")
            await playwright_api.expect(page.locator(".notice")).to_contain_text("retry")
            (parked,) = await wf.parked()
            assert parked.retry_requested
            assert new_id
            # (the refused write's 403 is the only resource that failed; no CSP violation)
            assert [p for p in problems if "status of 403" not in p] == [], problems
        finally:
            await browser.close()
    await asyncio.sleep(0)
