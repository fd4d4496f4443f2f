"""The answer's rules are stated once (analysis.answers.Answer): the JSON schema sent to the model, the system
prompt's key list and the check of what comes back agree, and a refused answer tells the model which key is wrong
and why."""
from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from xrayvision.analysis import prompts
from xrayvision.analysis.answers import Answer, InvalidAnswer, bounds, parse_answer

VALID: dict[str, Any] = {"short": "yes", "report": "Right lower lobe consolidation.", "confidence": 85, "severity": 6,
                         "summary": "pneumonia"}
SCHEMA = prompts.RESPONSE_FORMAT["json_schema"]["schema"]
# Answers around every rule's edge. Two rules JSON Schema cannot say portably (a pattern would be needed, which not
# every structured-output engine accepts): a text of spaces only, and a summary of more than five words.
CANDIDATES: list[dict[str, Any]] = [
    VALID,
    {**VALID, "short": "no", "confidence": 0, "severity": 0},
    {**VALID, "confidence": 100, "severity": 10},
    {**VALID, "confidence": 101}, {**VALID, "confidence": -1}, {**VALID, "severity": 11}, {**VALID, "severity": -1},
    {**VALID, "confidence": 7.5}, {**VALID, "confidence": "high"}, {**VALID, "confidence": None},
    {**VALID, "confidence": True},
    {**VALID, "short": "maybe"}, {**VALID, "short": ""}, {**VALID, "short": 1},
    {**VALID, "report": ""}, {**VALID, "summary": ""}, {**VALID, "report": 12}, {**VALID, "summary": ["a"]},
    {**VALID, "summary": "one two three four five"},
    *({k: v for k, v in VALID.items() if k != key} for key in VALID),
]
SCHEMA_CANNOT_SAY = [{**VALID, "report": "   "}, {**VALID, "summary": "one two three four five six"}]


def _schema_accepts(answer: dict[str, Any]) -> bool:
    return Draft202012Validator(SCHEMA).is_valid(answer)


def _parser_accepts(answer: dict[str, Any]) -> bool:
    try:
        parse_answer(json.dumps(answer))
    except InvalidAnswer:
        return False
    return True


def test_the_schema_sent_is_the_models_and_plain() -> None:
    assert SCHEMA == Answer.model_json_schema() == prompts.ANSWER_SCHEMA
    assert SCHEMA["type"] == "object" and SCHEMA["additionalProperties"] is False
    assert SCHEMA["required"] == list(SCHEMA["properties"]) == ["short", "report", "confidence", "severity", "summary"]
    assert "$defs" not in json.dumps(SCHEMA) and "$ref" not in json.dumps(SCHEMA)  # engines differ on references
    assert SCHEMA["properties"]["short"]["enum"] == ["yes", "no"]
    for key in ("confidence", "severity"):
        prop = SCHEMA["properties"][key]
        assert (prop["type"], prop["minimum"], prop["maximum"]) == ("integer", *bounds(key))
    Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("answer", CANDIDATES, ids=[json.dumps(c)[:60] for c in CANDIDATES])
def test_schema_and_check_agree(answer: dict[str, Any]) -> None:
    assert _parser_accepts(answer) == _schema_accepts(answer)


@pytest.mark.parametrize("answer", SCHEMA_CANNOT_SAY, ids=["blank-report", "six-words"])
def test_what_only_the_check_refuses(answer: dict[str, Any]) -> None:
    assert _schema_accepts(answer) and not _parser_accepts(answer)


@pytest.mark.parametrize("text", [
    '{"short": " Yes", "report": " Consolidation. ", "confidence": "85", "severity": 6.0, "summary": "a  b"}',
    '```json\n{"short": "yes", "report": "Consolidation.", "confidence": 85, "severity": 6, "summary": "a b",'
    ' "extra": 1}\n```\nThat is my answer.',
], ids=["loose-values", "fenced-with-extra-key"])
def test_a_loose_answer_is_read_and_comes_out_as_the_schema_says(text: str) -> None:
    # Models without structured output write numbers as text or 6.0, and add keys: read them, as the schema says.
    answer = parse_answer(text)
    assert (answer.short, answer.report, answer.confidence, answer.severity, answer.summary) == \
        ("yes", "Consolidation.", 85, 6, "a b")
    assert answer.positive == 1
    assert _schema_accepts(answer.model_dump())


@pytest.mark.parametrize(("answer", "message"), [
    ({**VALID, "severity": 14}, "severity 14 is outside 0-10"),
    ({**VALID, "confidence": 250, "severity": 14}, "confidence 250 is outside 0-100; severity 14 is outside 0-10"),
    ({k: v for k, v in VALID.items() if k != "summary"}, "summary is missing"),
    ({**VALID, "short": "maybe"}, "short must be 'yes' or 'no'"),
    ({**VALID, "confidence": 7.5}, "confidence 7.5 is not a whole number"),
    ({**VALID, "confidence": "high"}, "confidence 'high' is not a number"),
    ({**VALID, "confidence": True}, "confidence is not a number"),
    ({**VALID, "report": "  "}, "report is empty"),
    ({**VALID, "report": 3}, "report is not a text"),
    ({**VALID, "summary": "one two three four five six"}, "summary has more than 5 words"),
], ids=["range", "two-ranges", "missing", "enum", "fraction", "word", "bool", "blank", "type", "words"])
def test_a_refusal_names_the_key_and_why(answer: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidAnswer) as caught:
        parse_answer(json.dumps(answer))
    assert str(caught.value) == message
    # ...and that is what the model reads when asked again.
    assert message in prompts.RETRY_PROMPT.format(reason=caught.value)


def test_no_json_at_all() -> None:
    with pytest.raises(InvalidAnswer, match="no JSON object"):
        parse_answer("The lungs are clear.")
    with pytest.raises(InvalidAnswer, match="no JSON object"):
        parse_answer(None)


def test_the_system_prompt_lists_each_key_with_its_meaning_and_range() -> None:
    for name, field in Answer.model_fields.items():
        assert f'- "{name}": {field.description}' in prompts.SYSTEM_PROMPT
    for key in ("confidence", "severity"):
        low, high = bounds(key)
        assert Answer.model_fields[key].description.startswith(f"a whole number {low}-{high}:")  # type: ignore[union-attr]
    assert parse_answer(prompts.EXAMPLE_ANSWER).summary == "right lower pneumonia"
