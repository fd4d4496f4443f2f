"""The four statistics pages in headless Chromium against the whole app: the figures of a hand-counted fixture in
their cards and tables (rates with their Wilson intervals), every chart drawn, the CSV and PNG downloads, initials
for a user, and a figure that changes on a live event without a reload."""
from __future__ import annotations

import csv
import io
from typing import Any

from conftest import ADMIN, READER, add_exams
from playwright.async_api import expect
from test_dashboard import Server, Watched, add_ai, browser, make_server, open_page, screenshot, server

from xrayvision import events
from xrayvision.keys import BUS, STORE
from xrayvision.store import reports

FIXTURES = (browser, make_server, server)  # shared with test_dashboard; imported here so pytest finds them

PAGES = ("/stats", "/stats/radiologists", "/stats/diagnostics", "/stats/insights")
CHARTS = {
    "/stats": ("daily-trends", "monthly-trends"),
    "/stats/radiologists": ("radiologists-monthly", "radiologists-severity"),
    "/stats/diagnostics": ("diagnostics-monthly", "diagnostics-severity"),
    "/stats/insights": ("severity-distributions", "severity-differences", "hourly", "ages"),
}
LIVIA = "Dr. Livia Caramitru"
ION = "Dr. Ion Pop"
BASAL = 'pneumonia, "basal"'  # a comma and quotes: the CSV must quote it

# Chest exams at threshold 5: (AI severity, report severity, radiologist, diagnosis).
# TP: 0, 1; FN: 2; TN: 3; FP: 4 -> sensitivity 2/3, specificity 1/2.
SEED = ((8, 8, LIVIA, BASAL), (7, 6, LIVIA, BASAL), (2, 7, ION, BASAL), (1, 0, ION, "normal"), (6, 1, LIVIA, "normal"))
# Wilson 95% intervals; the API gives 4 decimals (2 of 3: 0.2077-0.9385), shown rounded half up to a tenth of a %.
SENSITIVITY = "66.7% (20.8–93.9)"  # 2 of 3
SPECIFICITY = "50.0% (9.5–90.6)"  # 1 of 2: 0.0945-0.9055
SENSITIVITY_AFTER = "75.0% (30.1–95.4)"  # 3 of 4, once one more true positive is graded


async def grade(server: Server, uid: str, severity: int, radiologist: str, summary: str) -> None:
    found = reports.Report(report_id=f"dr-{uid[-6:]}", request_id="", patient_id="", text=f"{summary}.",
                           radiologist=radiologist, justification="", issued=None, type="XR chest", status="final")
    await reports.save_found(server.app[STORE], uid, found)
    await reports.save_grade(server.app[STORE], uid, found.text, reports.GradeRecord(
        positive=int(severity >= 5), severity=severity, summary=summary, text_en=None, model="m", endpoint="pri",
        prompt_version="v", latency_ms=5), [])


async def seed(server: Server) -> list[str]:
    uids = await add_exams(server.app, server.tmp_path, len(SEED) + 1)
    for uid, (ai, rad, radiologist, summary) in zip(uids, SEED, strict=False):
        await add_ai(server, uid, ai, 80, "finding", summary)
        await grade(server, uid, rad, radiologist, summary)
    return uids


async def charts_drawn(page: Any, names: tuple[str, ...]) -> None:
    for name in names:
        canvas = page.locator(f'canvas[data-chart="{name}"]')
        await expect(canvas).to_have_count(1)
        drawn = await canvas.evaluate("""(canvas) => {
            const chart = window.Chart.getChart(canvas);
            if (!chart || chart.data.datasets.length === 0) return false;
            const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            for (let i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) return true;
            return false;
        }""")
        assert drawn, f"chart {name} is not drawn"


async def download_text(page: Any, button: Any) -> tuple[str, bytes]:
    async with page.expect_download() as info:
        await button.click()
    download = await info.value
    return download.suggested_filename, (await download.path()).read_bytes()


def table_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def cell(page: Any, table: str, row: str, column: int) -> Any:
    return page.locator(f'[data-table="{table}"] tbody tr').filter(
        has=page.locator("th", has_text=row)).locator("td").nth(column)


async def test_every_statistics_page_shows_the_fixtures_figures_for_admin_and_user(server: Server,
                                                                                  browser: Any) -> None:
    await seed(server)
    for user, livia, ion in ((ADMIN, LIVIA, ION), (READER, "D.L.C.", "D.I.P.")):
        for path in PAGES:
            watched: Watched = await open_page(browser, server, path, user=user)
            page = watched.page
            await expect(page.locator("#stats-root")).to_have_attribute("data-loaded", "1")
            assert await page.locator(".shell-note").count() == 0
            await expect(page.locator(".stats-definitions")).to_contain_text("docs/statistics.md")
            await charts_drawn(page, CHARTS[path])
            if path == "/stats":
                await expect(page.locator('[data-stat="total"] strong')).to_have_text("5")
                await expect(page.locator('[data-stat="sensitivity"] strong')).to_have_text(SENSITIVITY)
                await expect(page.locator('[data-stat="specificity"] strong')).to_have_text(SPECIFICITY)
                # columns after the region: exams, reviewed, AI positive, TP, TN, FP, FN, sensitivity, specificity
                row = [await cell(page, "regions", "chest", i).text_content() for i in range(9)]
                assert row == ["5", "5", "3", "2", "1", "1", "1", SENSITIVITY, SPECIFICITY]
                matrix = page.locator('[data-table="confusion-chest"] tbody')
                await expect(matrix.locator("tr").nth(0).locator("td")).to_have_text(["2", "1"])  # TP, FP
                await expect(matrix.locator("tr").nth(1).locator("td")).to_have_text(["1", "1"])  # FN, TN
                name, data = await download_text(page, page.locator('[data-csv="regions"]'))
                assert name == "regions.csv"
                rows = table_rows(data)
                assert rows[0][:2] == ["Region", "Exams"] and rows[1][:8] == ["chest", "5", "5", "3", "2", "1", "1",
                                                                              "1"]
                assert rows[1][8] == SENSITIVITY
            elif path == "/stats/radiologists":
                # Livia: TP, TP, FP -> specificity over 1 negative is 0/1; Ion: FN, TN -> sensitivity 0/1.
                await expect(cell(page, "radiologists", livia, 0)).to_have_text("3")  # reports
                await expect(cell(page, "radiologists", livia, 1)).to_have_text("2")  # abnormal by the reports
                await expect(cell(page, "radiologists", livia, 3)).to_have_text("100.0% (34.2–100.0)")
                await expect(cell(page, "radiologists", ion, 3)).to_have_text("0.0% (0.0–79.4)")
                if user == READER:
                    assert "Caramitru" not in await page.content()
                    assert "Pop" not in await page.locator("#stats-root").text_content()
                legend = await page.locator('canvas[data-chart="radiologists-monthly"]').evaluate(
                    "(c) => window.Chart.getChart(c).data.datasets.map((d) => d.label).sort()")
                assert legend == sorted([livia, ion])
            elif path == "/stats/diagnostics":
                await expect(cell(page, "diagnostics", BASAL, 0)).to_have_text("3")
                name, data = await download_text(page, page.locator('[data-csv="diagnostics"]'))
                assert f'\r\n"{BASAL.replace(chr(34), chr(34) * 2)}",3,' in data.decode()  # quoted, quotes doubled
                assert {r[0] for r in table_rows(data)[1:]} == {BASAL, "normal"}
            else:
                await expect(page.locator('[data-table="workload"] tbody tr')).to_have_count(2)
                await expect(cell(page, "workload", livia, 0)).to_have_text("3")
            first_chart = CHARTS[path][0]
            name, data = await download_text(page, page.locator(f'[data-png="{first_chart}"]'))
            assert name == f"{first_chart}.png" and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
            await screenshot(page, f"stats-{path.strip('/').replace('/', '-')}-{user[0]}", full_page=True)
            watched.assert_clean()
            await page.context.close()


async def test_a_newly_graded_report_changes_the_figures_without_a_reload(server: Server, browser: Any) -> None:
    uids = await seed(server)
    watched = await open_page(browser, server, "/stats")
    page = watched.page
    await expect(page.locator('[data-stat="sensitivity"] strong')).to_have_text(SENSITIVITY)
    await expect(page.locator("#live-state")).to_have_text("live")
    await page.evaluate("window.__same_document = true")
    last = uids[-1]
    await add_ai(server, last, 9, 90, "finding", "pneumonia")
    await grade(server, last, 9, LIVIA, "pneumonia")
    server.app[BUS].publish(events.RADCHECK, {"uid": last, "positive": True, "severity": 9, "summary": "pneumonia",
                                              "confidence": 90, "radiologist": LIVIA})
    await expect(page.locator('[data-stat="sensitivity"] strong')).to_have_text(SENSITIVITY_AFTER)
    await expect(page.locator('[data-stat="total"] strong')).to_have_text("6")
    assert await page.evaluate("window.__same_document === true")  # no reload: the page's own state survived
    await charts_drawn(page, CHARTS["/stats"])
    watched.assert_clean()
    await page.context.close()


async def test_a_burst_of_events_reloads_the_figures_at_most_once_every_two_seconds(server: Server,
                                                                                    browser: Any) -> None:
    uids = await seed(server)
    watched = await open_page(browser, server, "/stats/insights")
    page = watched.page
    await expect(page.locator("#stats-root")).to_have_attribute("data-loaded", "1")
    await expect(page.locator("#live-state")).to_have_text("live")
    for expected in ("2", "3"):
        for name in (events.NEW_EXAM, events.RADCHECK, events.REQUEUE, events.NEW_EXAM, events.RADCHECK):
            server.app[BUS].publish(name, {"uid": uids[0], "positive": True, "severity": 8, "summary": "x",
                                           "confidence": 80, "radiologist": LIVIA, "reviewed": False})
        await expect(page.locator("#stats-root")).to_have_attribute("data-loaded", expected)
    starts = await page.evaluate("performance.getEntriesByType('resource')"
                                 ".filter((e) => e.name.endsWith('/api/stats/insights')).map((e) => e.startTime)")
    assert len(starts) == 3, starts  # one load per burst of five events
    assert starts[2] - starts[1] >= 1950, starts  # the second burst came at once, its load waited out the gap
    watched.assert_clean()
    await page.context.close()
