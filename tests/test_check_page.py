"""The /check page in headless Chromium (the fixtures of test_dashboard.py) against the whole app and
tests/llm_server.py: each tool's answer is shown, as text even when the model answers with markup, and a refusal is
shown with the server's reason."""
from __future__ import annotations

import asyncio
from typing import Any

from llm_server import DEFAULT_CRITIQUE, LLMServer, Scenario
from playwright.async_api import expect
from test_dashboard import XSS, ServerFactory, browser, make_server, open_page, pytestmark, screenshot  # noqa: F401

from xrayvision.keys import POOL

OPENAI = {"model_name": "medgemma-test", "openai_api_key": "k", "probe_interval": "0.1", "timeout": "5",
          "answer_retries": "0", "max_attempts": "1", "backoff_base": "0.01", "backoff_max": "0.05",
          "report_max_chars": "300"}


async def test_the_check_page_shows_answers_as_text_and_refusals_clearly(make_server: ServerFactory,  # noqa: F811
                                                                         browser: Any) -> None:  # noqa: F811
    critique = {**DEFAULT_CRITIQUE, "overall_assessment": f"Fine {XSS}"}
    async with LLMServer(grades=lambda text: {"pathologic": "yes", "severity": 7, "summary": XSS},
                         translations=lambda text: f"<b>Heart</b> normal. {XSS}", critique=critique) as llm:
        server = await make_server(openai={"openai_url_primary": llm.base_url, **OPENAI})
        async with asyncio.timeout(30):
            while not server.app[POOL].endpoints[0].healthy:
                await asyncio.sleep(0.02)
        watched = await open_page(browser, server, "/check")
        page = watched.page
        await page.locator("#check-report").fill("Cord în limite normale. Opacitate bazal dreaptă.")

        await page.get_by_role("button", name="Quick check").click()
        await expect(page.locator("#check-summary")).to_have_text(XSS)
        await expect(page.locator("#check-pathologic")).to_have_text("yes")
        await expect(page.locator("#check-severity")).to_have_text("7/10")

        await page.get_by_role("button", name="Translate").click()
        await expect(page.locator("#translation-text")).to_have_text(f"<b>Heart</b> normal. {XSS}")

        await page.get_by_role("button", name="Detailed analysis").click()
        await expect(page.locator("#analysis-body")).to_contain_text(f"Fine {XSS}")
        await expect(page.locator("#analysis-body")).to_contain_text("comparison with priors")

        # Markup from the model stayed text: no element was made of it, no handler ran.
        for where in ("#check-result", "#translation-result", "#analysis-result"):
            assert await page.locator(f"{where} img, {where} b").count() == 0, where
        await expect(page.locator("#check-error")).to_be_hidden()
        assert llm.task_log == ["translate", "grade", "translate", "critique"] and llm.problems == []
        await screenshot(page, "check-answers", full_page=True)

        # Refusals: the server's reason on the page, with its status.
        await page.locator("#check-report").fill("x" * 301)
        await page.get_by_role("button", name="Quick check").click()
        await expect(page.locator("#check-error")).to_have_text(
            "Check failed: report: longer than 300 characters (HTTP 413)")
        await expect(page.locator("#check-result")).to_be_hidden()  # the earlier grade is not this report's
        await expect(page.locator("#translation-result")).to_be_visible()
        llm.scenarios = lambda n, body: Scenario.GARBAGE
        await page.locator("#check-report").fill("Normal chest radiograph.")
        await page.get_by_role("button", name="Translate").click()
        await expect(page.locator("#check-error")).to_have_text(
            "Translation failed: the model gave no usable answer: invalid answer from the model: no JSON object in "
            "the answer (HTTP 502)")
        await page.locator("#check-report").fill("   ")
        await page.get_by_role("button", name="Detailed analysis").click()
        await expect(page.locator("#check-error")).to_have_text("Paste a report first.")
        await screenshot(page, "check-error")
        watched.assert_clean()
