"""A report's words from its presentedForm: the Attachment's bytes decoded per its contentType (charset included),
HTML reduced to text with its paragraph and line breaks kept."""
from __future__ import annotations

import codecs
import re
from email.message import Message
from html.parser import HTMLParser
from typing import Any

PLAIN = ("text/plain",)
HTML = ("text/html", "application/xhtml+xml")
# elements that stand on lines of their own (br only ends one); the rest run inline
BLOCKS = frozenset({"p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "pre",
                    "blockquote", "section", "article", "header", "footer", "hr", "dd", "dt", "title"})
MAX_TEXT = 200_000  # characters: a radiology report is a few thousand; more is not a report, and HTML costs the loop
SKIPPED = frozenset({"script", "style", "head"})


class Undecodable(Exception):
    """The attachment's data cannot be read as its contentType says. str(): why, without the data."""


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in SKIPPED:
            self.skipping += 1
        elif tag in BLOCKS or tag == "br":
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)  # <br/> is one break, not a start and an end

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIPPED:
            self.skipping = max(self.skipping - 1, 0)
        elif tag in BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _Text()
    parser.feed(markup)
    parser.close()
    lines = [re.sub(r"[ \t\r\f\v\u00a0]+", " ", line).strip() for line in "".join(parser.parts).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _media(content_type: str) -> tuple[str, str]:
    """('text/html', 'iso-8859-2') from 'text/html; charset=ISO-8859-2'; the charset defaults to UTF-8."""
    message = Message()
    message["content-type"] = content_type or "text/plain"
    return message.get_content_type(), message.get_content_charset() or "utf-8"


def readable(content_type: str | None) -> bool:
    return _media(content_type or "")[0] in PLAIN + HTML


def decode(data: bytes, content_type: str | None) -> str:
    """The text of one Attachment's (already base64-decoded) data; Undecodable when it cannot be."""
    media, charset = _media(content_type or "")
    if media not in PLAIN + HTML:
        raise Undecodable(f"unsupported contentType {media}")
    try:
        codecs.lookup(charset)
        text = data.decode(charset)
    except LookupError:
        raise Undecodable(f"unknown charset {charset}") from None
    except UnicodeDecodeError:
        raise Undecodable(f"data is not valid {charset}") from None
    if len(text) > MAX_TEXT:
        raise Undecodable(f"text longer than {MAX_TEXT} characters")
    text = text.lstrip("\ufeff")
    text = html_to_text(text) if media in HTML else re.sub(r"\r\n?", "\n", text).strip()
    return text


def report_text(forms: list[Any], conclusion: str | None) -> str:
    """The first readable presentedForm (plain text before HTML), else the conclusion; '' when neither has words.
    `forms` are R4B Attachments. Undecodable when a readable form's data is not what its contentType says."""
    candidates = [f for f in forms if f.data is not None and readable(f.contentType)]
    candidates.sort(key=lambda f: _media(f.contentType or "")[0] not in PLAIN)
    for form in candidates:
        text = decode(form.data, form.contentType)
        if text:
            return text
    return (conclusion or "").strip()
