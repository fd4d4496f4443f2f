"""Report grading: the prompts and answer models, the translation decision, and grade_report/translate/critique
through a real EndpointPool and the real openai client against tests/llm_server.py on loopback: failover between two
servers, no model, and a task that fails with every call it made."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import make_settings
from llm_server import GARBAGE_TEXT, LLMServer, Scenario, report_text, sequence
from test_endpoints import pools  # noqa: F401 (the fixture that stops the pools a test started)

from xrayvision.analysis import grading, textcalls
from xrayvision.analysis.answers import InvalidAnswer
from xrayvision.analysis.endpoints import EndpointPool
from xrayvision.analysis.prompts import RETRY_PROMPT
from xrayvision.config import Settings

FAST = {"timeout": "2", "probe_interval": "0.05", "backoff_base": "0.01", "backoff_max": "0.05",
        "max_attempts": "3", "answer_retries": "1", "model_name": "medgemma-test", "openai_api_key": "test-key"}
ROMANIAN = "Opacitate alveolară bazal dreaptă. SCD drept liber. Cord în limite normale."
ENGLISH = "Patchy consolidation in the right lower zone. The heart is of normal size."


def _settings(tmp_path: Path, *servers: LLMServer, **openai: str) -> Settings:
    return make_settings(tmp_path, {"openai": {
        **FAST, "openai_url_primary": servers[0].base_url if servers else "",
        "openai_url_secondary": servers[1].base_url if len(servers) > 1 else "", **openai}})


async def _pool(started: list[EndpointPool], settings: Settings, *, healthy: int | None = None) -> EndpointPool:
    """A started pool; waits until `healthy` endpoints (default: all) answered their probe."""
    o = settings.openai
    pool = EndpointPool(o.endpoints, timeout=o.timeout, probe_interval=o.probe_interval,
                        structured=o.structured_output)
    started.append(pool)
    await pool.start()
    want = len(pool.endpoints) if healthy is None else healthy
    async with asyncio.timeout(30):
        while sum(e.healthy for e in pool.endpoints) < want or any(e.since is None for e in pool.endpoints):
            await asyncio.sleep(0.01)
    return pool


@pytest.fixture
async def llm() -> AsyncIterator[LLMServer]:
    async with LLMServer() as server:
        yield server


# --- models and prompts -------------------------------------------------------------------------------------------

def test_the_grade_schema_and_prompt_come_from_the_model() -> None:
    schema = grading.GRADE_FORMAT["json_schema"]["schema"]
    assert schema["required"] == ["pathologic", "severity", "summary"] and schema["additionalProperties"] is False
    assert schema["properties"]["pathologic"]["enum"] == ["yes", "no"]
    assert (schema["properties"]["severity"]["minimum"], schema["properties"]["severity"]["maximum"]) == (0, 10)
    for name, field in grading.Grade.model_fields.items():
        assert f'"{name}": {field.description}' in grading.GRADE_PROMPT
    # The reference's ideas, in our words: sentence by sentence, spelling ignored, Romanian hints.
    for words in ("one sentence at a time", "Spelling mistakes", '"fără" or "fara" means without', '"SCD"',
                  '"liber"'):
        assert words in grading.GRADE_PROMPT
    critique = grading.CRITIQUE_FORMAT["json_schema"]["schema"]
    assert critique["required"] == ["first_pass", "second_pass", "third_pass", "overall_assessment"]
    assert all(d["additionalProperties"] is False for d in critique["$defs"].values())
    assert grading.GRADING_PROMPT_VERSION


def test_grades_are_validated_and_summaries_lower_cased() -> None:
    fenced = 'Sure:\n```json\n{"pathologic": "YES", "severity": "7", "summary": " Right  Pneumonia "}\n``` ok'
    assert grading.parse_grade(fenced) == grading.Grade(pathologic="yes", severity=7, summary="right pneumonia")
    for answer, problem in [
        ('{"pathologic": "maybe", "severity": 3, "summary": "x"}', "pathologic must be 'yes' or 'no'"),
        ('{"pathologic": "no", "severity": 11, "summary": "x"}', "severity 11 is outside 0-10"),
        ('{"pathologic": "no", "severity": true, "summary": "x"}', "severity is not a number"),
        ('{"pathologic": "yes", "severity": 5, "summary": "a long four words"}', "summary has more than 3 words"),
        ('{"pathologic": "yes", "severity": 5}', "summary is missing"),
        ('{"pathologic": "no", "severity": 4, "summary": "x"}', 'the answer must have severity 0 when "pathologic"'),
        ('{"pathologic": "yes", "severity": 0, "summary": "x"}', "and 1-10 when it is"),
        (GARBAGE_TEXT, "no JSON object"),
    ]:
        with pytest.raises(InvalidAnswer, match=problem):
            grading.parse_grade(answer)


def test_a_critique_is_validated_against_its_schema() -> None:
    valid = {"first_pass": {"topic": "chest", "purpose": "cough", "primary_findings": "clear"},
             "second_pass": {"main_points": ["clear lungs"], "supporting_evidence": [], "conclusions_valid": True},
             "third_pass": {"assumptions": [], "missing_info": ["priors"], "critique": "short"},
             "overall_assessment": "fine"}
    assert grading.parse_critique(json.dumps(valid)).second_pass.conclusions_valid is True
    broken = json.loads(json.dumps(valid))
    del broken["third_pass"]["critique"]
    broken["second_pass"]["main_points"] = "clear lungs"
    with pytest.raises(InvalidAnswer) as caught:
        grading.parse_critique(json.dumps(broken))
    assert "third_pass.critique is missing" in str(caught.value)
    assert "second_pass.main_points" in str(caught.value)
    with pytest.raises(InvalidAnswer, match="translation is empty"):
        grading.parse_translation('{"translation": "  "}')


@pytest.mark.parametrize("text, english", [
    (ENGLISH, True),
    ("Normal.", True),  # nothing Romanian in it: nothing to translate
    ("No acute cardiopulmonary abnormality. SCD clear.", True),
    (ROMANIAN, False),
    ("Fara leziuni pleuro-pulmonare active, SCD libere", False),  # no diacritics, Romanian words
    ("Cord in limite normale.", False),
])
def test_which_reports_are_translated(text: str, english: bool) -> None:
    assert grading.is_english(text) is english


def test_the_report_message_separates_sentences() -> None:
    assert '"""\nNormal. SCD libere. 2.5 cm\n"""' in grading.report_message("  Normal.SCD libere. 2.5 cm ")


# --- through the pool ---------------------------------------------------------------------------------------------

async def test_an_english_report_is_graded_in_one_call(tmp_path: Path, llm: LLMServer, pools) -> None:  # type: ignore  # noqa: F811
    llm.grades = {"consolidation": {"pathologic": "yes", "severity": 7, "summary": "Pneumonia"}}
    settings = _settings(tmp_path, llm)
    graded = await textcalls.grade_report(await _pool(pools, settings), settings, ENGLISH, wait=False)
    assert graded.grade == grading.Grade(pathologic="yes", severity=7, summary="pneumonia")
    assert graded.text_en is None
    assert llm.task_log == ["grade"] and llm.problems == []
    request = llm.requests[0]
    assert request["messages"][0]["content"] == grading.GRADE_PROMPT
    assert request["response_format"]["json_schema"]["name"] == "report_grade"
    (call,) = graded.calls
    assert call == textcalls.Call(kind="grade", model="medgemma-test", endpoint="pri",
                                  prompt_version=grading.GRADING_PROMPT_VERSION, latency_ms=call.latency_ms,
                                  raw=call.raw, tokens_in=812, tokens_out=64, error=None)
    assert json.loads(call.raw or "") == {"pathologic": "yes", "severity": 7, "summary": "Pneumonia"}


async def test_a_romanian_report_is_translated_then_the_translation_graded(tmp_path: Path, llm: LLMServer,
                                                                           pools) -> None:  # type: ignore  # noqa: F811
    llm.translations = {"Opacitate": "Alveolar opacity at the right base. Right costophrenic angle clear."}
    llm.grades = {"Alveolar opacity": {"pathologic": "yes", "severity": 5, "summary": "basal pneumonia"}}
    settings = _settings(tmp_path, llm)
    graded = await textcalls.grade_report(await _pool(pools, settings), settings, ROMANIAN, wait=True)
    assert graded.text_en == "Alveolar opacity at the right base. Right costophrenic angle clear."
    assert graded.grade.summary == "basal pneumonia" and graded.grade.positive == 1
    assert llm.task_log == ["translate", "grade"] and llm.problems == []
    assert report_text(llm.requests[0]) == ROMANIAN and report_text(llm.requests[1]) == graded.text_en
    assert [c.kind for c in graded.calls] == ["translate", "grade"]
    assert all(c.error is None for c in graded.calls)


async def test_the_text_is_capped_for_grading(tmp_path: Path, llm: LLMServer, pools) -> None:  # type: ignore  # noqa: F811
    settings = _settings(tmp_path, llm, report_max_chars="100")
    text = "No acute findings. " + "The lungs are clear. " * 20
    await textcalls.grade_report(await _pool(pools, settings), settings, text, wait=False)
    assert report_text(llm.requests[0]) == text[:100].strip()


async def test_grading_fails_over_to_the_other_endpoint(tmp_path: Path, pools) -> None:  # type: ignore  # noqa: F811
    always_500 = lambda n, body: Scenario.ERROR_500  # noqa: E731
    async with LLMServer(scenarios=always_500) as primary, LLMServer() as secondary:
        settings = _settings(tmp_path, primary, secondary)
        pool = await _pool(pools, settings)  # both idle: the primary, first configured, is asked first
        graded = await textcalls.grade_report(pool, settings, "Normal chest radiograph.", wait=False)
        assert graded.grade == grading.Grade(pathologic="no", severity=0, summary="normal")
        assert [(c.endpoint, c.error is None) for c in graded.calls] == [("pri", False), ("sec", True)]
        assert "crashed" in (graded.calls[0].error or "") and graded.calls[0].raw is None
        assert primary.chat_count == 1 and secondary.task_log == ["grade"]
        assert primary.problems == secondary.problems == []


async def test_no_healthy_endpoint_is_no_model_at_once_unless_told_to_wait(tmp_path: Path, pools) -> None:  # type: ignore  # noqa: F811
    async with LLMServer(healthy=False) as server:
        settings = _settings(tmp_path, server)
        pool = await _pool(pools, settings, healthy=0)
        with pytest.raises(textcalls.NoModel):
            await textcalls.grade_report(pool, settings, ENGLISH, wait=False)
        with pytest.raises(textcalls.NoModel):
            await textcalls.critique(pool, settings, ENGLISH, wait=False)
        assert server.chat_count == 0
        waiting = asyncio.ensure_future(textcalls.translate(pool, settings, ROMANIAN, wait=True))
        await asyncio.sleep(0)
        assert not waiting.done()
        server.healthy = True  # the next probe finds it
        translated = await asyncio.wait_for(waiting, timeout=30)
        assert translated.answer.translation == f"English: {ROMANIAN}"
    with pytest.raises(textcalls.NoModel, match="configured"):
        no_endpoints = _settings(tmp_path)
        await textcalls.grade_report(await _pool(pools, no_endpoints), no_endpoints, ENGLISH, wait=False)


async def test_garbage_answers_fail_the_task_with_every_call(tmp_path: Path, pools) -> None:  # type: ignore  # noqa: F811
    async with LLMServer(scenarios=lambda n, body: Scenario.GARBAGE) as server:
        settings = _settings(tmp_path, server)
        with pytest.raises(textcalls.TaskFailed) as caught:
            await textcalls.grade_report(await _pool(pools, settings), settings, ENGLISH, wait=False)
    failed = caught.value
    assert failed.reason.startswith("invalid answer from the model: no JSON object")
    assert not failed.unreachable
    assert len(failed.calls) == 2  # answer_retries = 1
    assert all(c.raw == GARBAGE_TEXT and (c.error or "").startswith("invalid answer") for c in failed.calls)
    # The model was told why on the second try.
    retry = server.requests[1]["messages"]
    assert retry[-2] == {"role": "assistant", "content": GARBAGE_TEXT}
    assert retry[-1]["content"] == RETRY_PROMPT.format(reason="no JSON object in the answer")
    assert server.problems == []


async def test_a_failed_translation_fails_the_grade_with_its_calls(tmp_path: Path, pools) -> None:  # type: ignore  # noqa: F811
    async with LLMServer(scenarios=sequence(Scenario.OUT_OF_RANGE, Scenario.ERROR_500, Scenario.ERROR_500,
                                            Scenario.ERROR_500)) as server:
        settings = _settings(tmp_path, server, answer_retries="0")
        pool = await _pool(pools, settings)
        with pytest.raises(textcalls.TaskFailed, match="translation failed: invalid answer.*translation is empty"):
            await textcalls.grade_report(pool, settings, ROMANIAN, wait=False)
        # A model that cannot be reached: the calls say so, and the failure is marked unreachable.
        async with asyncio.timeout(30):
            while not pool.endpoints[0].healthy:
                await asyncio.sleep(0.01)
        with pytest.raises(textcalls.TaskFailed) as caught:
            await textcalls.critique(pool, settings, ENGLISH, wait=False)
    assert caught.value.unreachable
    assert [c.kind for c in caught.value.calls] == ["critique"] * len(caught.value.calls)
    assert all(c.error and c.raw is None for c in caught.value.calls)


async def test_a_critique_is_returned_validated(tmp_path: Path, llm: LLMServer, pools) -> None:  # type: ignore  # noqa: F811
    settings = _settings(tmp_path, llm)
    result = await textcalls.critique(await _pool(pools, settings), settings, ENGLISH, wait=False)
    assert isinstance(result.answer, grading.Critique)
    assert result.answer.first_pass.topic == "chest radiograph"
    assert llm.task_log == ["critique"] and llm.problems == []


async def test_no_model_after_the_translation_still_returns_its_call(tmp_path: Path, llm: LLMServer,
                                                                     pools) -> None:  # type: ignore  # noqa: F811
    settings = _settings(tmp_path, llm)
    pool = await _pool(pools, settings)

    def translate_then_fall_over(text: str) -> str:
        pool.endpoints[0].healthy = False  # the only endpoint is gone before the grade is asked
        return "Opacity at the right base."

    llm.translations = translate_then_fall_over
    with pytest.raises(textcalls.NoModel) as caught:
        await textcalls.grade_report(pool, settings, ROMANIAN, wait=False)
    assert [(c.kind, c.error) for c in caught.value.calls] == [("translate", None)]
    assert llm.task_log == ["translate"]
