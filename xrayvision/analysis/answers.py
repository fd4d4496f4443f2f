"""The model's answer: one pydantic model states its keys, types and ranges once. The JSON schema sent to the model
(prompts.ANSWER_SCHEMA), the key list in the system prompt and the check of what comes back are all made from it;
the answer is found in whatever text came back, or refused with a reason the model is told when asked again."""
from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, TypeVar

import annotated_types
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError
from pydantic_core import ErrorDetails

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
MAX_SUMMARY_WORDS = 5


class InvalidAnswer(ValueError):
    """The model's text holds no usable answer; the message says what is wrong, for the log and the exam."""


def _folded(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _no_bool(value: Any) -> Any:
    # JSON true is not a number here, though Python counts it as 1; "85" and 85.0 are accepted for models without
    # structured output.
    if isinstance(value, bool):
        raise ValueError("is not a number")
    return value


def _few_words(value: str) -> str:
    words = value.split()
    if len(words) > MAX_SUMMARY_WORDS:
        raise ValueError(f"has more than {MAX_SUMMARY_WORDS} words")
    return " ".join(words)


# The kinds of value answers are made of (report grading uses them too).
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Whole = Annotated[int, BeforeValidator(_no_bool)]
YesNo = Annotated[Literal["yes", "no"], BeforeValidator(_folded)]


class Answer(BaseModel):
    """The finding on one radiograph."""

    # The docstring and the field descriptions go into the schema the model is sent; the descriptions are also
    # the system prompt's list of keys (prompts.py).
    # Extra keys are ignored when reading, but the schema asks for none (strict structured output needs that).
    model_config = ConfigDict(frozen=True, extra="ignore", json_schema_extra={"additionalProperties": False})

    short: YesNo = Field(
        description='"yes" if there is an abnormal finding, "no" if the image is normal')
    report: Text = Field(description="your findings in a few plain sentences, incidental ones included")
    confidence: Whole = Field(ge=0, le=100, description="a whole number 0-100: 90 and over when sure, 70-89 fairly "
                                                        "sure, 50-69 unsure, below 50 a guess")
    severity: Whole = Field(ge=0, le=10, description="a whole number 0-10: 0 normal, 1-3 minor, 4-6 moderate, 7-8 "
                                                     "serious, 9-10 critical and urgent")
    summary: Annotated[Text, AfterValidator(_few_words)] = Field(
        description='the main finding in one to five words, such as "normal", "pneumonia", "distal radius fracture"')

    @property
    def positive(self) -> int:
        return 1 if self.short == "yes" else 0


def answer_schema() -> dict[str, Any]:
    """The JSON schema of Answer: a plain object of required, typed and bounded keys, as llama.cpp, vLLM and Ollama
    accept for structured output."""
    return Answer.model_json_schema()


def bounds(name: str, model: type[BaseModel] = Answer) -> tuple[int, int]:
    """The (low, high) range of an integer key of `model` (Answer unless told)."""
    metadata = model.model_fields[name].metadata
    low = next(m.ge for m in metadata if isinstance(m, annotated_types.Ge))
    high = next(m.le for m in metadata if isinstance(m, annotated_types.Le))
    return int(low), int(high)  # type: ignore[call-overload]


def extract_json(text: str) -> dict[str, Any]:
    """The first JSON object in `text`: inside a code fence first, else anywhere, trailing prose ignored."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        start = candidate.find("{")
        while start != -1:
            try:
                value, _ = decoder.raw_decode(candidate, start)
            except json.JSONDecodeError:
                start = candidate.find("{", start + 1)
                continue
            if isinstance(value, dict):
                return value
            start = candidate.find("{", start + 1)
    raise InvalidAnswer("no JSON object in the answer")


def _problem(error: ErrorDetails, model: type[BaseModel]) -> str:
    """One validation error as the model is told it: which key, and why."""
    key = ".".join(str(part) for part in error["loc"]) or "the answer"
    kind, value, context = error["type"], error["input"], error.get("ctx") or {}
    if kind == "missing":
        return f"{key} is missing"
    if kind == "literal_error":
        return f"{key} must be {context['expected']}"
    if kind in ("string_too_short", "string_type"):
        return f"{key} is empty" if kind == "string_too_short" else f"{key} is not a text"
    if kind in ("greater_than_equal", "less_than_equal"):
        low, high = bounds(key, model)
        return f"{key} {value} is outside {low}-{high}"
    if kind == "int_from_float":
        return f"{key} {value!r} is not a whole number"
    if kind in ("int_parsing", "int_type"):
        return f"{key} {value!r} is not a number"
    if kind == "value_error":
        return f"{key} {context['error']}"
    return f"{key}: {error['msg']}"


M = TypeVar("M", bound=BaseModel)


def parse_as(model: type[M], text: str | None) -> M:
    """The `model` answer in `text`, or InvalidAnswer naming every problem (the model is told all of them at once)."""
    data = extract_json(text or "")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidAnswer("; ".join(_problem(e, model) for e in exc.errors())) from None


def parse_answer(text: str | None) -> Answer:
    """The finding on a radiograph in `text`, or InvalidAnswer."""
    return parse_as(Answer, text)
