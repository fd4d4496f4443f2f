"""The radiologist's verdict and the AI's positivity, defined once: as SQL over an exam row's copies (`exams e`,
kept true by the schema's triggers; `:t` is [processing] SEVERITY_THRESHOLD) and as Python over the same values.
Filters, the worklist, the prompt's "judged wrong", events and statistics all use these.

- reviewed: a radiologist's verdict exists: a manual review (`e.verdict` 0/1, the latest one) or a graded final
  report (`e.rad_severity` 0-10);
- the verdict (truth) of a reviewed exam: the latest manual review when there is one (it outranks the report),
  else the graded report's severity >= T; None (NULL) when not reviewed;
- AI positive: the latest AI answer's severity >= T; None when there is no answer.
"""
from __future__ import annotations

REVIEWED_SQL = "(e.verdict >= 0 OR e.rad_severity >= 0)"
NOT_REVIEWED_SQL = "(e.verdict < 0 AND e.rad_severity < 0)"  # the same negated, in a form an index can serve
TRUTH_SQL = ("(CASE WHEN e.verdict >= 0 THEN e.verdict WHEN e.rad_severity >= 0 THEN e.rad_severity >= :t "
             "ELSE NULL END)")
AI_POSITIVE_SQL = "(e.ai_severity >= :t)"
# Shown when both are known: the AI's positive equals the verdict (1) or not (0); -1 otherwise.
CORRECT_SQL = (f"(CASE WHEN {REVIEWED_SQL} AND e.ai_severity >= 0 THEN ({AI_POSITIVE_SQL} = {TRUTH_SQL}) "
               "ELSE -1 END)")


def radiologist_verdict(manual: int | None, rad_severity: int | None, threshold: int) -> bool | None:
    """True abnormal, False normal, None not reviewed; `manual` is the latest review (1 abnormal, 0 normal, -1 or
    None none), `rad_severity` the graded report's (-1 or None until graded)."""
    if manual is not None and manual >= 0:
        return bool(manual)
    if rad_severity is not None and rad_severity >= 0:
        return rad_severity >= threshold
    return None


def ai_positive(severity: int | None, threshold: int) -> bool | None:
    """The AI answer's positivity; None without an answer."""
    if severity is None or severity < 0:
        return None
    return severity >= threshold
