"""The pages in a real browser: Debian's headless Chromium driven by Playwright, against the whole app on loopback.

Each test runs the server (build_app through an AppRunner) on the test's own event loop and drives the browser
with Playwright's async API on that same loop. Every page is watched: no request may leave for another host, no
JavaScript dialog may open and no script error or CSP refusal may be logged."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp_jinja2
import pytest
from aiohttp import web
from conftest import ADMIN, READER, add_exams, basic, cnp_with_check, free_port, make_settings, storescu, synthetic_cr
from llm_server import LLMServer
from playwright.async_api import async_playwright, expect

from xrayvision.app import build_app
from xrayvision.keys import BUS, RECEIVER, SETTINGS, STORE
from xrayvision.store import reports

CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright never downloads a browser here
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
XSS = "<img src=x onerror=alert(1)>"
TIMEOUT_MS = 10_000

# tests/run installs Chromium; a developer without it skips these, CI never does.
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                                reason="Chromium is not installed (tests/run installs it)")
expect.set_options(timeout=TIMEOUT_MS)


@dataclass
class Server:
    app: web.Application
    url: str
    tmp_path: Path

    @property
    def origin(self) -> str:
        return self.url

    async def get_json(self, path: str, user: tuple[str, str] = ADMIN) -> Any:
        async with aiohttp.ClientSession() as session, session.get(self.url + path, headers=basic(user)) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def post_json(self, path: str, body: dict[str, Any], user: tuple[str, str] = ADMIN) -> Any:
        async with aiohttp.ClientSession() as session, \
                session.post(self.url + path, json=body, headers=basic(user)) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """Start the whole app on loopback, on this test's loop. Stopped after the browser is closed (fixtures end in
    reverse order), so no page holds a WebSocket open while the server shuts down."""
    runners: list[web.AppRunner] = []

    async def start(openai: dict[str, str] | None = None, fhir: dict[str, str] | None = None,
                    **processing: str) -> Server:
        # No model unless `openai` names one: exams wait in the queue. No FHIR server unless `fhir` names one.
        settings = make_settings(tmp_path, {"openai": {"openai_url_primary": "", **(openai or {})},
                                            "dashboard": {"rate_limit": "0", "rate_limit_heavy": "0"},
                                            "fhir": fhir or {}, "processing": processing})
        app = build_app(settings)
        runner = web.AppRunner(app, shutdown_timeout=5)
        await runner.setup()
        runners.append(runner)
        port = settings.dashboard.port
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return Server(app, f"http://127.0.0.1:{port}", tmp_path)

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    return await make_server()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@dataclass
class Watched:
    """A page and what it did: every request's URL, dialogs opened, script errors and console errors."""
    page: Any
    server: Server
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.dialogs == [], f"a script opened a dialog: {self.dialogs}"
        assert self.errors == [], f"script or console errors: {self.errors}"
        host = self.server.url.removeprefix("http://")
        foreign = [url for url in self.requests
                   if not re.match(rf"^(https?|wss?)://{re.escape(host)}(/|$)", url) and not url.startswith("data:")]
        assert foreign == [], f"requests to another host: {foreign}"
        assert self.requests, "nothing was recorded"


async def open_page(browser: Any, server: Server, path: str = "/", user: tuple[str, str] = ADMIN,
                    viewport: dict[str, int] | None = None) -> Watched:
    context = await browser.new_context(
        http_credentials={"username": user[0], "password": user[1]},
        viewport=viewport or {"width": 1366, "height": 900},
        base_url=server.url,
    )
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    watched = Watched(page, server)
    page.on("request", lambda request: watched.requests.append(request.url))
    page.on("websocket", lambda ws: watched.requests.append(ws.url))

    async def on_dialog(dialog: Any) -> None:
        watched.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda exc: watched.errors.append(f"pageerror: {exc}"))

    def on_console(message: Any) -> None:
        # An API refusal (a 409 or a 501) is logged by Chromium as a failed resource: that one is expected.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            watched.errors.append(f"console: {message.text}")

    page.on("console", on_console)
    if path is not None:
        response = await page.goto(path)
        assert response is not None and response.status == 200
    return watched


def card(page: Any, uid: str) -> Any:
    return page.locator(f'.exam[data-uid="{uid}"]')


async def screenshot(page: Any, name: str, full_page: bool = False) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(target), full_page=full_page)
    assert target.stat().st_size > 1000
    return target


async def add_ai(server: Server, uid: str, severity: int, confidence: int, text: str, summary: str) -> None:
    threshold = server.app[SETTINGS].processing.severity_threshold
    await server.app[STORE].execute(
        "INSERT INTO ai_reports (uid, created, updated, text, positive, severity, confidence, summary, model) "
        "VALUES (?, '2026-11-20 09:00:00', '2026-11-20 09:00:00', ?, ?, ?, ?, ?, 'test-model')",
        (uid, text, int(severity >= threshold), severity, confidence, summary))
    await server.app[STORE].execute("UPDATE exams SET status = 'done' WHERE uid = ?", (uid,))


async def add_rad(server: Server, uid: str, severity: int, text: str, summary: str, radiologist: str,
                  text_en: str | None = None, justification: str = "") -> None:
    await server.app[STORE].execute(
        "INSERT INTO rad_reports (uid, created, updated, text, text_en, severity, summary, radiologist, justification) "
        "VALUES (?, '2026-11-20 10:00:00', '2026-11-20 10:00:00', ?, ?, ?, ?, ?, ?)",
        (uid, text, text_en, severity, summary, radiologist, justification))


def scale_of(transform: str) -> float:
    match = re.match(r"matrix\(([-\d.e]+), [-\d.e]+, [-\d.e]+, [-\d.e]+, ([-\d.e]+), ([-\d.e]+)\)", transform)
    assert match, transform
    return float(match.group(1))


# --- the worklist -------------------------------------------------------------------------------------------------

async def test_the_worklist_lists_exams_and_a_new_one_arrives_without_a_reload(server: Server, browser: Any) -> None:
    await add_exams(server.app, server.tmp_path, 3)
    watched = await open_page(browser, server)
    page = watched.page
    await expect(page.locator(".exam")).to_have_count(3)
    await expect(page.locator("#live-state")).to_have_attribute("data-state", "live")
    await expect(page).to_have_title("XRayVision (Q:3)")
    await expect(page.locator("#stat-queue")).to_have_text("3")
    await expect(page.locator("#stat-processing")).to_have_text("Idle")
    await expect(page.locator("#next-query")).to_have_text("Disabled")
    await expect(page.locator("#fhir-health")).to_have_text("not configured")
    await expect(page.locator(".pager-label").first).to_have_text("Page 1 of 1 · 3 exams")
    await page.evaluate("window.__sameDocument = true")

    sent = synthetic_cr(server.tmp_path / "live.dcm", 64, 64, seed=9, PatientName="Nou^Sosit",
                        SeriesDate="20261120", SeriesTime="113000")
    result = await storescu(server.app[RECEIVER].port, sent)
    assert result.returncode == 0 and result.status(sent) == "Success", result.output

    await expect(page.locator(".exam")).to_have_count(4)
    newest = page.locator(".exam").first
    await expect(newest.locator('[data-field="patient"]')).to_contain_text("Nou Sosit")
    await expect(newest.locator("img")).to_have_attribute("src", re.compile(r"^/images/[\d.]+\.png$"))
    await expect(page).to_have_title("XRayVision (Q:4)")
    assert await page.evaluate("window.__sameDocument") is True  # no reload happened
    watched.assert_clean()


async def test_a_review_by_button_and_by_keyboard_reaches_the_server(server: Server, browser: Any) -> None:
    older, newer = await add_exams(server.app, server.tmp_path, 2)
    watched = await open_page(browser, server)
    page = watched.page
    await expect(page.locator(".exam")).to_have_count(2)
    assert await page.locator(".exam").first.get_attribute("data-uid") == newer

    await card(page, newer).locator('[data-action="abnormal"]').click()
    await expect(card(page, newer).locator(".badge-reviewed")).to_have_text("reviewed: abnormal")
    await expect(card(page, newer)).to_have_class(re.compile(r"\breviewed\b"))
    exam = await server.get_json(f"/api/exams/{newer}")
    assert exam["report"]["reviewed"] == 1 and exam["report"]["review"]["normal"] is False

    # A fresh page: j moves to the first card, j to the second, n marks it normal.
    await page.reload()
    await expect(page.locator(".exam")).to_have_count(2)
    await page.keyboard.press("j")
    await expect(card(page, newer)).to_have_class(re.compile(r"\bcurrent\b"))
    await page.keyboard.press("j")
    await expect(card(page, older)).to_have_class(re.compile(r"\bcurrent\b"))
    assert await page.evaluate("document.activeElement.dataset.uid") == older
    outline = await card(page, older).evaluate("e => getComputedStyle(e).boxShadow")
    assert outline != "none"  # the current card is visibly marked
    await page.keyboard.press("n")
    await expect(card(page, older).locator(".badge-reviewed")).to_have_text("reviewed: normal")
    exam = await server.get_json(f"/api/exams/{older}")
    assert exam["report"]["reviewed"] == 1 and exam["report"]["review"]["normal"] is True

    # k goes back; l asks for another look; a marks abnormal.
    await page.keyboard.press("k")
    await expect(card(page, newer)).to_have_class(re.compile(r"\bcurrent\b"))
    await page.keyboard.press("l")
    await expect(card(page, newer).locator(".badge-wait")).to_have_text("queued again")
    assert (await server.get_json(f"/api/exams/{newer}"))["exam"]["status"] == "requeue"
    await page.keyboard.press("a")
    await expect(page.locator(".toast-success").last).to_have_text("exam marked abnormal")

    # Shortcuts are off while typing: "n" in the search box types an n and reviews nothing.
    reviews_before = await server.app[STORE].fetch_value("SELECT COUNT(*) FROM reviews")
    reviews_posted = len([url for url in watched.requests if url.endswith("/api/radreview")])
    await page.locator("#f-search").click()
    await page.keyboard.type("n")
    await expect(page.locator("#f-search")).to_have_value("n")
    # Leaving the box applies the search: once that request went out, a review the "n" had started would have gone
    # out before it (both start synchronously from the page's one thread). No clock decides.
    async with page.expect_response(re.compile(r"/api/exams\?search=n$")):
        await page.keyboard.press("Tab")
    assert not [url for url in watched.requests if url.endswith("/api/radreview")][reviews_posted:]
    assert await server.app[STORE].fetch_value("SELECT COUNT(*) FROM reviews") == reviews_before
    await expect(page.locator(".exam")).to_have_count(2)

    # A refused action is a toast with the server's error.
    await card(page, older).locator('[data-action="getrad"]').click()
    await expect(page.locator(".toast-error").last).to_contain_text("Fetch report failed: no FHIR server is configured")
    watched.assert_clean()


async def test_the_viewer_zooms_pans_inverts_and_the_help_opens(server: Server, browser: Any) -> None:
    (uid,) = await add_exams(server.app, server.tmp_path, 1)
    await add_ai(server, uid, 7, 88, "Consolidation in the right lower lobe.", "pneumonia")
    await add_rad(server, uid, 7, "Pneumonie bazală dreaptă.", "pneumonia", "Ana Pop",
                  text_en="Right basal pneumonia.")
    watched = await open_page(browser, server)
    page = watched.page
    await card(page, uid).locator("button.thumb").click()
    viewer = page.locator("#viewer")
    await expect(viewer).to_be_visible()
    image = page.locator("#viewer-image")
    await expect(image).to_have_attribute("src", f"/images/{uid}.png")
    await page.wait_for_function("document.getElementById('viewer-image').naturalWidth > 0")
    await expect(viewer.locator('[data-viewer="ai-summary"]')).to_have_text(
        "AI: pneumonia (severity 7/10, confidence 88%)")
    await expect(viewer.locator('[data-viewer="ai-text"]')).to_have_text("Consolidation in the right lower lobe.")
    await expect(viewer.locator('[data-viewer="rad-text"]')).to_have_text("Right basal pneumonia.")

    transform = lambda: image.evaluate("e => getComputedStyle(e).transform")  # noqa: E731
    style_filter = lambda: image.evaluate("e => getComputedStyle(e).filter")  # noqa: E731
    assert scale_of(await transform()) == 1
    await viewer.get_by_role("button", name="Zoom in").click()
    assert scale_of(await transform()) == pytest.approx(1.25)
    await page.locator("#viewer-stage").hover()
    await page.mouse.wheel(0, -400)
    await page.wait_for_function("parseFloat(getComputedStyle(document.getElementById('viewer-image'))"
                                 ".transform.slice(7)) > 1.3")
    box = await page.locator("#viewer-stage").bounding_box()
    assert box is not None
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    before = await transform()
    await page.mouse.move(cx, cy)
    await page.mouse.down()
    await page.mouse.move(cx + 60, cy + 30, steps=4)
    await page.mouse.up()
    after = await transform()
    assert after != before and scale_of(after) == scale_of(before)  # moved, same zoom

    await viewer.get_by_role("button", name="Invert").click()
    assert "invert(1)" in await style_filter()
    await page.locator("#viewer-brightness").evaluate(
        "e => { e.value = '150'; e.dispatchEvent(new Event('input', {bubbles: true})); }")
    assert "brightness(1.5)" in await style_filter()
    await page.keyboard.press("i")  # the shortcut inverts back
    assert "invert" not in await style_filter()
    await page.keyboard.press("i")
    await screenshot(page, "lightbox")
    await page.keyboard.press("Escape")
    await expect(viewer).to_be_hidden()

    # Enter on the current card opens the viewer again; Esc closes it.
    await page.keyboard.press("Enter")
    await expect(viewer).to_be_visible()
    await page.keyboard.press("Escape")
    await expect(viewer).to_be_hidden()

    await page.keyboard.press("?")
    help_dialog = page.locator("#help")
    await expect(help_dialog).to_be_visible()
    await expect(help_dialog).to_contain_text("mark the exam abnormal")
    await screenshot(page, "help")
    await page.keyboard.press("Escape")
    await expect(help_dialog).to_be_hidden()
    watched.assert_clean()


async def test_filters_follow_the_url_and_the_back_button(server: Server, browser: Any) -> None:
    start = dt.datetime(2026, 11, 20, 8, 0)
    chest_low, chest_high = await add_exams(server.app, server.tmp_path, 2, start=start, ProtocolName="Torace AP")
    abdomen_done, abdomen_error = await add_exams(server.app, server.tmp_path, 2, start=start + dt.timedelta(hours=1),
                                                  ProtocolName="Abdomen simplu")
    await add_ai(server, chest_low, 2, 70, "No finding.", "normal")
    await add_ai(server, chest_high, 8, 91, "Pneumothorax.", "pneumothorax")
    await add_ai(server, abdomen_done, 4, 60, "Air-fluid levels?", "ileus")
    await server.app[STORE].execute("UPDATE exams SET status = 'error', reason = 'timed out' WHERE uid = ?",
                                    (abdomen_error,))
    watched = await open_page(browser, server)
    page = watched.page
    await expect(page.locator(".exam")).to_have_count(4)
    await expect(page.locator('#f-region option[value="abdomen"]')).to_have_count(1)

    await page.locator("#f-region").select_option("abdomen")
    await expect(page).to_have_url(re.compile(r"/\?region=abdomen$"))
    await expect(page.locator(".exam")).to_have_count(2)
    await page.locator("#f-status").select_option("error")
    await expect(page).to_have_url(re.compile(r"/\?region=abdomen&status=error$"))
    await expect(page.locator(".exam")).to_have_count(1)
    await expect(card(page, abdomen_error).locator(".badge-error")).to_have_text("error: timed out")

    await page.go_back()
    await expect(page).to_have_url(re.compile(r"/\?region=abdomen$"))
    await expect(page.locator(".exam")).to_have_count(2)
    await expect(page.locator("#f-status")).to_have_value("")
    await page.go_back()
    await expect(page).to_have_url(server.url + "/")
    await expect(page.locator(".exam")).to_have_count(4)
    await expect(page.locator("#f-region")).to_have_value("")
    await page.go_forward()
    await expect(page.locator("#f-region")).to_have_value("abdomen")
    await expect(page.locator(".exam")).to_have_count(2)

    # An interval: typed and applied with Enter. A bad one is refused with a toast and changes nothing.
    await page.locator("#f-ai-severity").fill("3-6")
    await page.locator("#f-ai-severity").press("Enter")
    await expect(page).to_have_url(re.compile(r"/\?region=abdomen&ai_severity=3-6$"))
    await expect(page.locator(".exam")).to_have_count(1)
    await expect(card(page, abdomen_done)).to_be_visible()
    await page.locator("#f-ai-severity").fill("11")
    await page.locator("#f-ai-severity").press("Enter")
    await expect(page.locator(".toast-error").last).to_contain_text("Severities take 0-10")
    await expect(page.locator("#f-ai-severity")).to_have_attribute("aria-invalid", "true")
    await expect(page).to_have_url(re.compile(r"/\?region=abdomen&ai_severity=3-6$"))
    # The radiologist's severity is another filter: no report here is graded, so nothing matches.
    await page.locator("#f-ai-severity").fill("")
    await page.locator("#f-severity").fill("0-10")
    await page.locator("#f-severity").press("Enter")
    await expect(page).to_have_url(re.compile(r"/\?region=abdomen&severity=0-10$"))
    await expect(page.locator("#exams-empty")).to_be_visible()

    # The other filters, each into the URL and the request the page makes.
    await page.locator("#f-clear").click()
    await expect(page).to_have_url(server.url + "/")
    await expect(page.locator(".exam")).to_have_count(4)
    for selector, value, expected in [("#f-positive", "yes", 1), ("#f-reviewed", "no", 1), ("#f-correct", "no", 0)]:
        await page.locator(selector).select_option(value)
        await expect(page.locator(".exam")).to_have_count(expected)
    await expect(page).to_have_url(re.compile(r"/\?reviewed=no&positive=yes&correct=no$"))
    await expect(page.locator("#exams-empty")).to_be_visible()
    await page.locator("#f-clear").click()
    await page.locator("#f-confidence").fill("65-90")
    await page.locator("#f-confidence").press("Enter")
    await expect(page.locator(".exam")).to_have_count(1)  # chest_low 70; chest_high is 91, abdomen 60
    await expect(card(page, chest_low)).to_be_visible()
    await page.locator("#f-clear").click()
    await page.locator("#f-sort").select_option("triage")
    await expect(page).to_have_url(re.compile(r"/\?sort=triage$"))
    await expect(page.locator(".exam").first).to_have_attribute("data-uid", chest_high)
    await page.locator("#f-search").fill(abdomen_error[-12:])
    await page.locator("#f-search").press("Enter")
    await expect(page.locator(".exam")).to_have_count(1)
    await expect(page).to_have_url(re.compile(rf"/\?search={re.escape(abdomen_error[-12:])}&sort=triage$"))

    # A shared link opens the same view, controls included.
    shared = await open_page(browser, server, "/?region=chest&ai_severity=5-&sort=triage&status=done")
    await expect(shared.page.locator(".exam")).to_have_count(1)
    await expect(card(shared.page, chest_high)).to_be_visible()
    await expect(shared.page.locator("#f-region")).to_have_value("chest")
    await expect(shared.page.locator("#f-ai-severity")).to_have_value("5-")
    await expect(shared.page.locator("#f-sort")).to_have_value("triage")
    await expect(shared.page.locator("#f-status")).to_have_value("done")
    watched.assert_clean()
    shared.assert_clean()


async def test_pagination_moves_through_pages(make_server: ServerFactory, browser: Any) -> None:
    server = await make_server(page_size="2")
    uids = await add_exams(server.app, server.tmp_path, 5)
    watched = await open_page(browser, server)
    page = watched.page
    pager = page.locator("[data-pager]").first
    await expect(pager.locator("[data-pager-label]")).to_have_text("Page 1 of 3 · 5 exams")
    await expect(pager.get_by_role("button", name="Previous page")).to_be_disabled()
    await pager.get_by_role("button", name="Next page").click()
    await expect(page).to_have_url(re.compile(r"/\?page=2$"))
    await expect(page.locator(".exam").first).to_have_attribute("data-uid", uids[2])
    await pager.get_by_role("button", name="Last page").click()
    await expect(page.locator(".exam")).to_have_count(1)
    await expect(pager.get_by_role("button", name="Next page")).to_be_disabled()
    # An arrival while on page 3 is announced, not forced into view.
    await add_exams(server.app, server.tmp_path, 1, start=dt.datetime(2026, 11, 21, 8, 0))
    await expect(page.locator("#new-arrivals")).to_have_text("1 new exam · show")
    await page.locator("#new-arrivals").click()
    await expect(page).to_have_url(server.url + "/")
    await expect(pager.locator("[data-pager-label]")).to_have_text("Page 1 of 3 · 6 exams")
    await page.go_back()
    await expect(pager.locator("[data-pager-label]")).to_have_text("Page 3 of 3 · 6 exams")
    watched.assert_clean()


# --- safety -------------------------------------------------------------------------------------------------------

async def test_text_from_dicom_models_and_reports_stays_text(server: Server, browser: Any) -> None:
    # The region comes from the body part, so that the exam is analysed (rendered, with its actions) like any chest.
    (uid,) = await add_exams(server.app, server.tmp_path, 1, PatientName=XSS, ProtocolName=XSS,
                             BodyPartExamined="CHEST")
    await add_ai(server, uid, 9, 97, XSS, XSS)
    await add_rad(server, uid, 8, XSS, XSS, XSS, text_en=XSS, justification=XSS)
    watched = await open_page(browser, server)
    page = watched.page
    exam = card(page, uid)
    await expect(exam).to_be_visible()
    # PN splits its groups at "=": the name is what comes before; whatever part arrives is shown as text.
    await expect(exam.locator('[data-field="patient"]')).to_contain_text("<img src")
    await expect(exam.locator('[data-field="protocol"]')).to_have_text(XSS)
    await expect(exam.locator('[data-field="ai-text"]')).to_have_text(XSS)
    await expect(exam.locator('[data-field="ai-summary"]')).to_have_text(f"AI: {XSS} (severity 9/10, confidence 97%)")
    await expect(exam.locator('[data-field="rad-summary"]')).to_have_text(f"{XSS}: {XSS} (severity 8/10)")
    await expect(exam.locator('[data-field="rad-text"]')).to_have_text(XSS)
    await expect(exam.locator('[data-field="rad-text-en"]')).to_have_text(XSS)

    # Through the live feed as well: a review sends the whole exam over /ws, and the card is rebuilt from it.
    await exam.locator('[data-action="normal"]').click()
    await expect(exam.locator(".badge-reviewed")).to_have_text("reviewed: normal")
    await exam.locator("button.thumb").click()
    await expect(page.locator("#viewer")).to_be_visible()
    await expect(page.locator('#viewer [data-viewer="ai-text"]')).to_have_text(XSS)
    await expect(page.locator('#viewer [data-viewer="patient"]')).to_contain_text("<img src")
    await page.keyboard.press("Escape")

    # The same exam as a user sees it: initials, and still text.
    reader = await open_page(browser, server, user=READER)
    await expect(card(reader.page, uid).locator('[data-field="ai-text"]')).to_have_text(XSS)

    for watched_page in (watched, reader):
        assert await watched_page.page.locator('img[src="x"]').count() == 0
        assert await watched_page.page.evaluate("document.querySelectorAll('[onerror]').length") == 0
        watched_page.assert_clean()


async def test_the_live_feed_ignores_bad_frames_and_reconnects_where_it_left(server: Server, browser: Any) -> None:
    first, second = await add_exams(server.app, server.tmp_path, 2)
    watched = await open_page(browser, server, path=None)  # type: ignore[arg-type]
    page = watched.page
    routes: list[tuple[Any, Any]] = []

    def route(ws: Any) -> None:
        routes.append((ws, ws.connect_to_server()))

    await page.route_web_socket(re.compile(r"/ws(\?|$)"), route)
    await page.goto("/")
    await expect(page.locator(".exam")).to_have_count(2)
    await expect(page.locator("#live-state")).to_have_attribute("data-state", "live")

    browser_side, _ = routes[0]
    for junk in ["{not json", "[]", "42", '{"dashboard": 3}', '{"dashboard": {}, "openai": {}, "event": {"name": 5}}',
                 '{"dashboard": {}, "openai": {}, "event": {"name": "radreview", "payload": {"uid": 1}}}']:
        browser_side.send(junk)
    frame = {"id": 0, "dashboard": {"queue_size": 42, "check_queue_size": 0, "processing": "A.B.", "error_count": 1,
                                    "ignore_count": 0, "success_count": 5},
             "openai": {"url": "", "health": {"pri": True, "sec": False}},
             "timings": {"avg_latency": 3.2, "min_latency": 1, "max_latency": 5}, "next_query": "Disabled"}
    browser_side.send(json.dumps(frame))
    await expect(page).to_have_title("XRayVision (Q:42)")
    await expect(page.locator("#stat-processing")).to_have_text("A.B.")
    # A frame without `endpoints` (health by name only): each endpoint shown by its name.
    await expect(page.locator("#ai-health .health.ok")).to_have_text("pri")
    await expect(page.locator("#ai-health .health.down")).to_have_text("sec")

    # A positive, unread result: a toast always, the chime only once the reader switched it on.
    positive = {**frame, "event": {"id": 0, "name": "new_exam",
                                   "payload": {"uid": first, "positive": True, "reviewed": False, "severity": 8}}}
    browser_side.send(json.dumps(positive))
    await expect(page.locator(".toast-alert").last).to_have_text("New positive exam, severity 8/10")
    chimes = lambda: [url for url in watched.requests if url.endswith("/static/chime.wav")]  # noqa: E731
    assert chimes() == []
    async with page.expect_request(re.compile(r"/static/chime\.wav$")):
        await page.locator("#chime-toggle").check()  # plays it once as a preview

    # A review through the API reaches the page over the feed.
    await server.post_json("/api/radreview", {"uid": first, "normal": False})
    await expect(card(page, first).locator(".badge-reviewed")).to_have_text("reviewed: abnormal")
    seen = server.app[BUS].last_id

    # The connection drops; what happens meanwhile is replayed after the reconnect, asked for by ?last_id=.
    await browser_side.close()
    await server.post_json("/api/radreview", {"uid": second, "normal": True}, user=READER)
    await expect(page.locator("#live-state")).to_have_attribute("data-state", "offline")
    await expect(card(page, second).locator(".badge-reviewed")).to_have_text("reviewed: normal", timeout=15_000)
    assert len(routes) >= 2
    assert routes[1][0].url.endswith(f"/ws?last_id={seen}")
    await expect(page.locator("#live-state")).to_have_attribute("data-state", "live")
    watched.assert_clean()


# --- every page ---------------------------------------------------------------------------------------------------

PAGES = [("/", "dashboard"), ("/check", "check"), ("/about", "about"), ("/stats", "stats"),
         ("/stats/radiologists", "stats-radiologists"), ("/stats/diagnostics", "stats-diagnostics"),
         ("/stats/insights", "stats-insights")]


async def _seed_a_shift(server: Server) -> None:
    """A handful of exams in the states a shift shows, for the screenshots."""
    uids = await add_exams(server.app, server.tmp_path, 6, start=dt.datetime(2026, 11, 20, 7, 0),
                           step=dt.timedelta(minutes=17))
    await add_ai(server, uids[0], 1, 92, "Lungs clear. No pleural effusion. Heart size normal.", "normal")
    await add_ai(server, uids[1], 7, 84, "Right lower lobe consolidation with air bronchograms, in keeping with "
                 "pneumonia.", "pneumonia")
    await add_rad(server, uids[1], 7, "Opacitate alveolară bazal drept, cu bronhogramă aerică. Aspect de pneumonie.",
                  "pneumonia", "Ana Pop", text_en="Alveolar opacity at the right base with air bronchogram: "
                  "pneumonia.", justification="Fever, cough for 3 days")
    await add_ai(server, uids[2], 9, 95, "Large left pneumothorax with mediastinal shift.", "pneumothorax")
    await add_ai(server, uids[3], 6, 58, "Possible small right pleural effusion.", "effusion")
    await add_rad(server, uids[3], 1, "Fără modificări patologice.", "normal", "Ion Ionescu")
    await server.app[STORE].execute("UPDATE exams SET status = 'error', reason = 'cannot connect' WHERE uid = ?",
                                    (uids[4],))
    await server.post_json("/api/radreview", {"uid": uids[0], "normal": True})


async def test_every_page_renders_in_the_dark_theme_with_its_headers(server: Server, browser: Any) -> None:
    await _seed_a_shift(server)
    watched = await open_page(browser, server, path=None)  # type: ignore[arg-type]
    page = watched.page
    for path, name in PAGES:
        response = await page.goto(path)
        assert response is not None and response.status == 200
        headers = response.headers
        assert headers["content-type"].startswith("text/html")
        assert headers["content-security-policy"].startswith("default-src 'self'")
        assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"
        assert await page.locator("html").get_attribute("data-theme") == "dark"
        await expect(page.locator("nav .brand")).to_have_text("XRayVision")
        await expect(page.locator(".user-name")).to_have_text(ADMIN[0])
        await expect(page.locator(".user-role")).to_have_text("admin")
        if path == "/":
            await expect(page.locator(".exam")).to_have_count(6)
            await expect(page.locator("#live-state")).to_have_attribute("data-state", "live")
            await page.wait_for_function("Array.from(document.querySelectorAll('.exam img'))"
                                         ".every(i => i.complete && i.naturalWidth > 0)")
        elif path == "/about":
            await expect(page.locator("#config-rows")).to_contain_text("DICOM AE title")
        elif path.startswith("/stats"):
            await expect(page.locator("#stats-root")).to_have_attribute("data-loaded", "1")  # drawn from the API
            assert await page.locator(".shell-note").count() == 0
        await screenshot(page, name, full_page=True)

    # The report check asks the API and shows its refusal as a toast.
    await page.goto("/check")
    await page.locator("#check-report").fill("Radiografie toracică: fără modificări.")
    await page.get_by_role("button", name="Quick check").click()
    await expect(page.locator(".toast-error")).to_contain_text("Check failed: no model available")

    # The light theme is remembered; a manual query that the server refuses says why.
    await page.goto("/")
    await page.locator("#theme-toggle").click()
    assert await page.locator("html").get_attribute("data-theme") == "light"
    await page.reload()
    assert await page.locator("html").get_attribute("data-theme") == "light"
    await expect(page.locator(".exam")).to_have_count(6)
    await page.get_by_role("button", name="Query", exact=True).click()
    await expect(page.locator(".toast-error")).to_contain_text("Query failed: query/retrieve from the PACS")
    await screenshot(page, "dashboard-light")

    # The chime is off until switched on, then remembered.
    assert not await page.locator("#chime-toggle").is_checked()
    await page.locator("#chime-toggle").check()
    await page.reload()
    assert await page.locator("#chime-toggle").is_checked()
    watched.assert_clean()

    # A tablet in portrait: the grid folds to one column and nothing overflows sideways.
    tablet = await open_page(browser, server, viewport={"width": 768, "height": 1024})
    await expect(tablet.page.locator(".exam")).to_have_count(6)
    assert await tablet.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await screenshot(tablet.page, "dashboard-tablet")
    tablet.assert_clean()

    async with aiohttp.ClientSession() as session, session.get(server.url + "/favicon.ico") as resp:
        assert resp.status == 200 and resp.content_type == "image/x-icon"
        assert (await resp.read())[:4] == b"\x00\x00\x01\x00"
    async with aiohttp.ClientSession() as session, session.get(server.url + "/about") as resp:
        assert resp.status == 401  # pages are behind auth like the data they show


async def test_templates_escape_what_they_are_given(server: Server) -> None:
    """The server side of the same rule: the Jinja2 environment autoescapes and fails on unknown names."""
    env = aiohttp_jinja2.get_env(server.app)
    assert env.autoescape is True
    assert env.from_string("<p>{{ value }}</p>").render(value=XSS) == "<p>&lt;img src=x onerror=alert(1)&gt;</p>"


async def test_the_worklist_fits_a_tablet(server: Server, browser: Any) -> None:
    """Portrait tablet: no sideways scrolling, every card and its actions inside the screen."""
    await _seed_a_shift(server)
    watched = await open_page(browser, server, viewport={"width": 768, "height": 1024})
    page = watched.page
    cards = page.locator(".exam")
    await expect(cards.first).to_be_visible()
    assert await page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
    for index in range(await cards.count()):
        box = await cards.nth(index).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 768, box
    await screenshot(page, "dashboard-tablet")
    watched.assert_clean()


# --- the scripts: ES modules of our own, shipped by pip -----------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


async def test_every_page_runs_its_scripts_as_modules_from_our_origin(server: Server, browser: Any) -> None:
    """The dashboard is a set of ES modules under /static/js/dashboard/ and every page imports common.js: no inline
    script and no global namespace, each module served with a JavaScript type (Chromium refuses a module of any
    other), and every script on disk loaded by some page (nothing left behind from before the split)."""
    await add_exams(server.app, server.tmp_path, 1)
    watched = await open_page(browser, server, path=None)  # type: ignore[arg-type]
    page = watched.page
    served: dict[str, str] = {}

    def on_response(response: Any) -> None:
        if response.request.resource_type == "script":
            served[response.url.removeprefix(server.url)] = response.headers.get("content-type", "")

    page.on("response", on_response)
    for path in ("/about", "/check", "/stats", "/"):
        response = await page.goto(path)
        assert response is not None and "script-src" not in response.headers["content-security-policy"]
        tags = await page.evaluate("Array.from(document.scripts, s => ({src: s.getAttribute('src'), type: s.type,"
                                   " inline: s.text.trim().length}))")
        assert all(tag["src"] and tag["src"].startswith("/static/js/") and not tag["inline"] for tag in tags), tags
        # theme.js alone is classic: it must set the theme before the first paint, which a module (deferred) cannot.
        assert [tag["src"] for tag in tags if tag["type"] != "module"] == ["/static/js/theme.js"], tags
        assert await page.evaluate("typeof window.XRV") == "undefined"
        if path == "/about":  # the page's module ran, through common.js's getJSON
            await expect(page.locator("#config-rows")).to_contain_text("DICOM AE title")
    await expect(page.locator(".exam")).to_have_count(1)
    await expect(page.locator("#live-state")).to_have_attribute("data-state", "live")

    on_disk = {"/static/" + p.relative_to(ROOT / "static").as_posix() for p in (ROOT / "static" / "js").rglob("*.js")}
    assert "/static/js/dashboard.js" not in on_disk
    assert {"/static/js/dashboard/main.js", "/static/js/dashboard/filters.js", "/static/js/dashboard/cards.js",
            "/static/js/dashboard/viewer.js", "/static/js/dashboard/live.js"} <= on_disk
    assert on_disk <= set(served), f"never loaded: {sorted(on_disk - set(served))}"
    wrong = {url: kind for url, kind in served.items() if not re.match(r"(text|application)/javascript\b", kind)}
    assert wrong == {}
    watched.assert_clean()


def test_pip_install_ships_every_static_file_and_template() -> None:
    """setup.cfg's data_files, expanded by setuptools as `pip install .` does: every file under static/ and
    templates/ lands under share/xrayvision/ at its own relative path, and no entry is a folder (a glob such as
    static/js/* matching a subfolder breaks the install, and the subfolder's files need their own line). Git's
    placeholders (.gitkeep) stay behind."""
    from setuptools.config.setupcfg import read_configuration

    data_files = read_configuration(ROOT / "setup.cfg")["options"]["data_files"]
    shipped: dict[str, str] = {}
    for target, sources in data_files:
        for source in sources:
            assert (ROOT / source).is_file(), f"{source} (for {target}) is not a file"
            shipped[Path(source).as_posix()] = target
    expected = {p.relative_to(ROOT).as_posix() for folder in ("static", "templates")
                for p in (ROOT / folder).rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert set(shipped) == expected
    for source, target in shipped.items():
        assert target == f"share/xrayvision/{Path(source).parent.as_posix()}", (source, target)


# --- identity, patient numbers, ignored exams and the model badge ------------------------------------------------

async def test_an_identity_conflict_is_flagged_and_only_a_valid_cnp_is_called_cnp(server: Server,
                                                                                 browser: Any) -> None:
    """Real instances through the real ingest: one CNP sent under two names (the patient is flagged on both of its
    exams), a patient with a valid CNP, and one whose number is the hospital's own (labelled "ID", not "CNP")."""
    app, folder = server.app, server.tmp_path
    twice = cnp_with_check("620010140123")
    (foreign,) = await add_exams(app, folder, 1, start=dt.datetime(2026, 11, 20, 8, 0), PatientID="HOSP-000731",
                                 PatientName="Vasile^Ana")
    (first,) = await add_exams(app, folder, 1, start=dt.datetime(2026, 11, 20, 8, 1), PatientID=twice,
                               PatientName="Ionescu^Maria")
    (conflicted,) = await add_exams(app, folder, 1, start=dt.datetime(2026, 11, 20, 8, 2), PatientID=twice,
                                    PatientName="Ionescu^Marta")
    (plain,) = await add_exams(app, folder, 1, start=dt.datetime(2026, 11, 20, 8, 3),
                               PatientID=cnp_with_check("170020340123"), PatientName="Pop^Ion")

    watched = await open_page(browser, server)
    page = watched.page
    await expect(page.locator(".exam")).to_have_count(4)
    await expect(card(page, first).locator('[data-field="identity"]')).to_be_visible()
    flag = card(page, conflicted).locator('[data-field="identity"]')
    await expect(flag).to_be_visible()
    await expect(flag).to_have_text("⚠ identity differs between images")
    await expect(flag).to_have_attribute("title", re.compile(r"different names, birth dates or sex"))
    await expect(card(page, conflicted).get_by_text("identity differs between images")).to_be_visible()
    for other in (plain, foreign):
        await expect(card(page, other).locator('[data-field="identity"]')).to_be_hidden()
    await expect(card(page, plain).locator('[data-field="ids"]')).to_have_text(re.compile(r"^CNP \d{13}$"))
    await expect(card(page, foreign).locator('[data-field="ids"]')).to_have_text("ID HOSP-000731")
    await screenshot(page, "dashboard-identity")

    # The viewer says it too, and keeps saying it after the exam changes (a review refreshes it from the API).
    await card(page, conflicted).locator("button.thumb").click()
    viewer_flag = page.locator('#viewer [data-viewer="identity"]')
    await expect(viewer_flag).to_be_visible()
    await expect(viewer_flag).to_have_text("⚠ identity differs between images")
    await screenshot(page, "lightbox-identity")
    await page.keyboard.press("n")
    await expect(card(page, conflicted).locator(".badge-reviewed")).to_have_text("reviewed: normal")
    await expect(viewer_flag).to_be_visible()
    await page.keyboard.press("k")  # the previous exam (newer) in the viewer: no conflict, no flag
    await expect(page.locator("#viewer-image")).to_have_attribute("src", f"/images/{plain}.png")
    await expect(viewer_flag).to_be_hidden()
    watched.assert_clean()


async def test_an_exam_that_will_never_be_analysed_offers_no_review_and_says_why(server: Server,
                                                                                  browser: Any) -> None:
    """A CT (the receiver marks it `ignore` with its reason when it is stored) beside a radiograph: the CT's card
    has no Normal, Abnormal or Look-again, no "no image yet", and shows the reason; its shortcuts review nothing."""
    (radiograph,) = await add_exams(server.app, server.tmp_path, 1)
    (ct,) = await add_exams(server.app, server.tmp_path, 1, start=dt.datetime(2026, 11, 20, 9, 0),
                            SOPClassUID="1.2.840.10008.5.1.4.1.1.2", Modality="CT", ProtocolName="CT cerebral")
    exam = await server.get_json(f"/api/exams/{ct}")
    assert exam["exam"]["status"] == "ignore" and "CT" in exam["exam"]["reason"]
    watched = await open_page(browser, server)
    page = watched.page
    await expect(page.locator(".exam")).to_have_count(2)

    ignored = card(page, ct)
    await expect(ignored.locator('[data-field="reason"]')).to_have_text(f"Not analysed: {exam['exam']['reason']}")
    await expect(ignored.locator(".badge-muted")).to_have_text("ignored")
    for action in ("normal", "abnormal", "requeue"):
        await expect(ignored.locator(f'[data-action="{action}"]')).to_have_count(0)
        await expect(card(page, radiograph).locator(f'[data-action="{action}"]')).to_be_visible()
    await expect(ignored.locator('[data-action="getrad"]')).to_be_visible()
    await expect(ignored.get_by_text("no image yet")).to_have_count(0)
    await expect(ignored.locator("button.thumb")).to_have_count(0)
    await expect(card(page, radiograph).locator('[data-field="reason"]')).to_be_hidden()

    # The keyboard cannot review it either: "n" on the current card says why and sends nothing.
    await page.keyboard.press("j")
    await expect(ignored).to_have_class(re.compile(r"\bcurrent\b"))
    await page.keyboard.press("n")
    await expect(page.locator(".toast-info").last).to_have_text(f"Not analysed: {exam['exam']['reason']}")
    assert not [url for url in watched.requests if url.endswith("/api/radreview")]
    assert await server.app[STORE].fetch_value("SELECT COUNT(*) FROM reviews") == 0
    await screenshot(page, "dashboard-ignored")

    # Nor the viewer (Enter): no actions there, and the same reason.
    await page.keyboard.press("Enter")
    await expect(page.locator("#viewer")).to_be_visible()
    await expect(page.locator('#viewer [data-viewer="reason"]')).to_have_text(f"Not analysed: {exam['exam']['reason']}")
    await expect(page.locator('#viewer [data-viewer="actions"]')).to_be_hidden()
    await page.keyboard.press("Escape")
    await expect(page.locator("#viewer")).to_be_hidden()
    await page.keyboard.press("j")
    await expect(card(page, radiograph)).to_have_class(re.compile(r"\bcurrent\b"))
    await page.keyboard.press("Enter")
    await expect(page.locator('#viewer [data-viewer="actions"]')).to_be_visible()
    await expect(page.locator('#viewer [data-viewer="reason"]')).to_be_hidden()
    watched.assert_clean()


async def test_the_model_badge_shows_the_active_url_and_why_an_endpoint_is_down(make_server: ServerFactory,
                                                                                browser: Any) -> None:
    """The real pool: tests/llm_server.py as the primary, a closed port with credentials in its URL as the
    secondary. The badge names the active URL, each endpoint by the log's word for it and each unhealthy one's real
    error; the password reaches neither the page nor its frames. A user's badge shows health alone."""
    async with LLMServer() as primary:
        port = free_port()  # nothing listens here until the secondary comes up
        server = await make_server(openai={"openai_url_primary": primary.base_url,
                                           "openai_url_secondary": f"http://ops:s3cret@127.0.0.1:{port}/v1",
                                           "probe_interval": "0.1"})
        watched = await open_page(browser, server, path=None)  # type: ignore[arg-type]
        page = watched.page
        frames: list[str] = []
        page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(str(payload))))
        await page.goto("/")
        await expect(page.locator("#live-state")).to_have_attribute("data-state", "live")
        health = page.locator("#ai-health")
        await expect(health.locator(".health.ok")).to_have_text("primary")
        await expect(health.locator(".health.down")).to_have_text("secondary")
        await expect(health.locator('.health-error[data-endpoint="sec"]')).to_have_text(
            re.compile(r"^cannot connect: connection refused \(since \d{1,2}:\d{2}( [AP]M)?\)$"))
        await expect(health.locator('.health-error[data-endpoint="pri"]')).to_have_count(0)
        await expect(health.locator(".health.down")).to_have_attribute("title", re.compile(
            rf"^not answering since .* · cannot connect: connection refused · "
            rf"http://ops@127\.0\.0\.1:{port}/v1/chat/completions$"))
        await expect(page.locator("#ai-url")).to_have_text(f"{primary.base_url}/chat/completions")
        await expect(page.locator("#ai-url")).to_be_visible()
        shown = await page.locator("body").evaluate(
            "b => b.innerText + Array.from(b.querySelectorAll('[title]'), e => e.title).join(' ')")
        assert "s3cret" not in shown and "s3cret" not in await page.content()
        assert frames and not [f for f in frames if "s3cret" in f]
        await page.locator(".system-bar").screenshot(path=str(SCREENSHOTS / "model-badge.png"))

        # A user's page: health by label, no URL, no error.
        reader = await open_page(browser, server, user=READER)
        reader_health = reader.page.locator("#ai-health")
        await expect(reader_health.locator(".health.ok")).to_have_text("primary")
        await expect(reader_health.locator(".health.down")).to_have_text("secondary")
        await expect(reader_health.locator(".health.down")).to_have_attribute("title", "not answering")
        await expect(reader_health.locator(".health-error")).to_have_count(0)
        await expect(reader.page.locator("#ai-url")).to_be_hidden()
        assert str(port) not in await reader.page.content()

        # The secondary comes up: the next probe finds it, and both badges follow without a reload.
        secondary = LLMServer()
        await secondary.start(port)
        try:
            for badge in (health, reader_health):
                await expect(badge.locator(".health.ok")).to_have_text(["primary", "secondary"])
                await expect(badge.locator(".health-error")).to_have_count(0)
        finally:
            await secondary.stop()
        assert not [f for f in frames if "s3cret" in f]
        watched.assert_clean()
        reader.assert_clean()


# --- radiologists' reports ----------------------------------------------------------------------------------------

async def test_the_fhir_badge_and_each_cards_report_state(make_server: ServerFactory, browser: Any) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/fhir"  # a FHIR server that is not there
    server = await make_server(fhir={"fhir_url": nobody, "fetch_interval": "1", "timeout": "1"}, enable_his="true")
    store = server.app[STORE]
    missing, graded, waiting = await add_exams(server.app, server.tmp_path, 3)
    await reports.record_miss(store, missing, "no final report yet", request_id="", patient_id="", max_attempts=1,
                              interval=60)
    found = reports.Report(report_id="dr-1", request_id="sr-1", patient_id="", text=f"Pneumonie bazală. {XSS}",
                           radiologist="Dr. Livia Caramitru", justification="tuse", issued=None, type="XR chest",
                           status="final")
    await reports.save_found(store, graded, found)
    await reports.save_grade(store, graded, found.text, reports.GradeRecord(
        positive=1, severity=7, summary="pneumonia", text_en=f"Basal pneumonia. {XSS}", model="m", endpoint="pri",
        prompt_version="v", latency_ms=5), [])
    await reports.save_found(store, waiting, dataclasses.replace(found, text="Fără modificări."))

    for user, radiologist in ((ADMIN, "Dr. Livia Caramitru"), (READER, "D.L.C.")):
        watched = await open_page(browser, server, user=user)
        page = watched.page
        await expect(page.locator("#fhir-health")).to_have_text("unreachable")
        await expect(page.locator("#fhir-error")).to_be_visible()
        await expect(page.locator("#fhir-error")).not_to_be_empty()
        await expect(card(page, missing).locator('[data-field="rad-state"]')).to_have_text(
            "No report found after 1 try (no final report yet)")
        await expect(card(page, waiting).locator('[data-field="rad-state"]')).to_have_text(
            "Report fetched, waiting to be graded")
        done = card(page, graded)
        await expect(done.locator('[data-field="rad-state"]')).to_be_hidden()
        await expect(done.locator('[data-field="rad-summary"]')).to_have_text(
            f"{radiologist}: pneumonia (severity 7/10)")
        await expect(done.locator('[data-field="rad-text"]')).to_have_text(f"Pneumonie bazală. {XSS}")
        await expect(done.locator('[data-field="rad-text-en"]')).to_have_text(f"Basal pneumonia. {XSS}")
        assert await page.locator(".exam img[src='x']").count() == 0  # report text is text, never markup
        if user == READER:
            assert "Caramitru" not in await page.content()
        await screenshot(page, f"reports-{user[0]}")
        watched.assert_clean()
        await page.context.close()


async def test_the_diagnostic_and_radiologist_filters_offer_what_the_reports_say(server: Server, browser: Any) -> None:
    store = server.app[STORE]
    first, second, third = await add_exams(server.app, server.tmp_path, 3)
    for uid, radiologist, summary, severity in ((first, "Dr. Livia Caramitru", "pneumonia", 7),
                                                (second, "Dr. Ion Pop", "normal", 0)):
        found = reports.Report(report_id=f"dr-{uid[-4:]}", request_id="", patient_id="", text=f"{summary}.",
                               radiologist=radiologist, justification="", issued=None, type="XR chest",
                               status="final")
        await reports.save_found(store, uid, found)
        await reports.save_grade(store, uid, found.text, reports.GradeRecord(
            positive=int(severity >= 5), severity=severity, summary=summary, text_en=None, model="m", endpoint="pri",
            prompt_version="v", latency_ms=5), [])
    for user, names in ((ADMIN, ["Dr. Ion Pop", "Dr. Livia Caramitru"]), (READER, ["D.I.P.", "D.L.C."])):
        watched = await open_page(browser, server, user=user)
        page = watched.page
        await expect(page.locator(".exam")).to_have_count(3)
        radiologist = page.locator("#f-radiologist")
        for name in names:
            await expect(radiologist.locator(f'option[value="{name}"]')).to_have_count(1)
        await expect(page.locator('#f-diagnostic option[value="pneumonia"]')).to_have_count(1)
        await page.locator("#f-diagnostic").select_option("pneumonia")
        await expect(page.locator(".exam")).to_have_count(1)
        await expect(card(page, first)).to_be_visible()
        await page.locator("#f-clear").click()
        await radiologist.select_option(names[0])  # Dr. Ion Pop, by name or by initials
        await expect(page.locator(".exam")).to_have_count(1)
        await expect(card(page, second)).to_be_visible()
        await expect(card(page, third)).to_have_count(0)
        watched.assert_clean()
        await page.context.close()
