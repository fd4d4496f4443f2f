"""Anatomic region and projection from free-text protocol strings.

Protocol names are typed by hand, often in Romanian with or without
diacritics ("Torace AP", "Gamba stg. fata+profil", "COL. LOMBARA"), or in
English; Body Part Examined holds DICOM's defined terms ("KNEE", "LSPINE").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Both the comma-below (correct) and cedilla (legacy encodings) forms occur.
_RO_FOLD = str.maketrans({"ă": "a", "â": "a", "î": "i", "ș": "s", "ş": "s", "ț": "t", "ţ": "t"})

# Keywords must start a word: not preceded by a letter or digit.
# [^\W_] is "word character except underscore", i.e. a Unicode letter or digit.
_WORD_START = r"(?<![^\W_])"
_WORD_END = r"(?![^\W_])"


def normalise(text: str | None) -> str:
    """Lower-case, fold diacritics and collapse whitespace."""
    if not text:
        return ""
    folded = text.lower().translate(_RO_FOLD)
    decomposed = unicodedata.normalize("NFKD", folded)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.split())


def _keyword(keyword: str) -> str:
    # A trailing "$" asks for a whole word ("hip$" is not "hipoplazie"); otherwise a word start is enough, so that
    # inflected Romanian forms ("capului", "genunchiul") still match.
    if keyword.endswith("$") and len(keyword) > 1:
        return re.escape(keyword[:-1]) + _WORD_END
    return re.escape(keyword)


def _keywords_pattern(keywords: Iterable[str]) -> re.Pattern[str] | None:
    alternatives = "|".join(_keyword(k) for k in keywords)
    if not alternatives:
        return None
    return re.compile(_WORD_START + "(?:" + alternatives + ")")


def _split_keywords(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    return tuple(k for k in (normalise(i) for i in items) if k)


@dataclass(frozen=True)
class RegionRules:
    """Ordered (region, keywords) rules, earlier rules taking priority, and the regions that are analysed
    (`supported`, from [supported_regions]; None: every region)."""

    rules: tuple[tuple[str, tuple[str, ...]], ...]
    supported: frozenset[str] | None = None
    # Compiled once; excluded from eq/hash/repr so the value semantics are
    # those of ``rules`` and ``supported`` alone.
    _patterns: tuple[tuple[str, re.Pattern[str] | None], ...] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        # Coerce to normalised tuples so the config stays hashable even if
        # built from lists or raw keywords.
        rules = tuple((str(region), _split_keywords(kws)) for region, kws in self.rules)
        object.__setattr__(self, "rules", rules)
        if self.supported is not None:
            object.__setattr__(self, "supported", frozenset(self.supported))
        object.__setattr__(
            self, "_patterns", tuple((region, _keywords_pattern(kws)) for region, kws in rules)
        )

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str | Iterable[str]],
                     supported: Iterable[str] | None = None) -> RegionRules:
        """Build from ``{region: "kw1, kw2" | [kw1, kw2]}``, keeping order."""
        return cls(tuple((region, _split_keywords(kws)) for region, kws in mapping.items()),
                   None if supported is None else frozenset(supported))

    def match(self, *texts: str | None) -> str | None:
        """Region of the first text that matches any rule, else None."""
        for text in texts:
            norm = normalise(text)
            if not norm:
                continue
            for region, pattern in self._patterns:
                if pattern is not None and pattern.search(norm):
                    return region
        return None

    def regions(self) -> tuple[str, ...]:
        """Region names in priority order."""
        return tuple(region for region, _ in self.rules)

    def not_analysed(self, region: str) -> str:
        """Why an exam of `region` ('' when none was recognised) is never analysed, or '' when it is."""
        if not region:
            return "no anatomic region could be recognised from the protocol"
        if self.supported is not None and region not in self.supported:
            return f"region '{region}' is not analysed (not in [supported_regions])"
        return ""


# Short letter-only abbreviations must be whole words ("pa" is not
# "patella"); full words only need a word start so inflected Romanian
# forms ("laterala", "oblica", "frontala") still match.
_PROJECTIONS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (
        view,
        re.compile(
            "|".join(
                _WORD_START + re.escape(t) + (_WORD_END if t.isalpha() and len(t) <= 3 else "")
                for t in tokens
            )
        ),
    )
    # Order matters: a multi-view protocol ("fata+profil", "AP si LAT")
    # reports its first/primary view, which is conventionally the frontal.
    for view, tokens in (
        ("frontal", ("a.p.", "ap", "p.a.", "pa", "d.v.", "dv", "v.d.", "vd", "d.p.", "dp", "fata", "frontal")),
        ("lateral", ("lat.", "lat", "lateral", "pr.", "profil")),
        ("oblique", ("oblic", "oblique", "obl.")),
    )
)


def projection(*texts: str | None) -> str:
    """View named by the first text that names one: "frontal", "lateral", "oblique" or ""."""
    for text in texts:
        norm = normalise(text)
        if not norm:
            continue
        for view, pattern in _PROJECTIONS:
            if pattern.search(norm):
                return view
    return ""
