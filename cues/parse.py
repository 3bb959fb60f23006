"""Tolerant parsing of an LLM answer into a list of cue strings (pure functions).

Status of a parse:

* ``ok``: the text is valid JSON (optionally inside a code fence) with a
  ``sounding_objects`` list of strings;
* ``repaired``: something had to be fixed first: prose around the JSON, single quotes,
  trailing commas, a truncated object, a near-miss key, a comma-separated string instead of a
  list, a bare bulleted list or an ``Answer: a, b`` line;
* ``malformed``: nothing readable (the stage then asks once more with the repair prompt).

>>> parse_answer('{"sounding_objects": ["man"]}')
ParseResult(items=['man'], status='ok', note='')
>>> parse_answer("Sure! ```json\\n{'sounding_objects': ['dog', 'man',],}\\n```").status
'repaired'
>>> parse_answer("- a dog\\n- two men").items
['a dog', 'two men']
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass

ANSWER_KEY = "sounding_objects"
# Keys a model uses instead of the asked one; matched after lower-casing and dropping [ _-].
_KEY_ALIASES = ("soundingobjects", "soundingobject", "soundingsources", "soundsources", "answer",
                "objects", "cues", "sources", "candidates")
MAX_ITEM_WORDS = 6
# An answer is a few hundred tokens: longer text is cut, deeper nesting is not JSON we read (the
# json module and ast recurse once per level and raise RecursionError near 1000 levels).
MAX_CHARS = 1 << 16
MAX_DEPTH = 64
_FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)```", re.S)
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+(.+?)\s*$")
_ANSWER_LINE = re.compile(r"(?:sounding[ _]objects?|answer|sound(?:ing)? sources?)\s*[:=]\s*(.+)", re.I)


@dataclass(frozen=True)
class ParseResult:
    items: list[str]
    status: str  # ok | repaired | malformed
    note: str = ""


def _strict(text: str):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None


def _close_truncated(text: str) -> str:
    """Close quotes/brackets left open by a generation that hit its token limit."""
    stack, in_str, esc, str_start = [], False, False, 0
    for i, ch in enumerate(text):
        if in_str:
            esc, in_str = (not esc and ch == "\\"), (in_str if esc or ch != '"' else False)
            continue
        if ch == '"':
            in_str, str_start = True, i
        elif ch in "[{":
            stack.append("]" if ch == "[" else "}")
        elif ch in "]}" and stack:
            stack.pop()
    # A string cut mid-way is dropped, not kept half-written ("gui" is no cue).
    out = text[:str_start] if in_str else text
    out = re.sub(r"[,:]\s*$", "", out.rstrip())
    if stack and stack[-1] == "}":  # inside an object: a dangling key whose value never started
        out = re.sub(r'(?<=[{,])\s*"[^"]*"$', "", out).rstrip().rstrip(",")
    return out + "".join(reversed(stack))


def _loose(text: str):
    """JSON after the usual repairs, or a Python literal (single quotes); None if neither."""
    fixed = re.sub(r",\s*([\]}])", r"\1", text)          # trailing commas
    for candidate in (fixed, _close_truncated(fixed)):
        obj = _strict(candidate)
        if obj is not None:
            return obj
        try:
            return ast.literal_eval(candidate)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            pass
        obj = _strict(re.sub(r"'", '"', candidate))       # 'single' quotes with apostrophe-free content
        if obj is not None:
            return obj
    return None


def _items(value) -> list[str] | None:
    if isinstance(value, str):
        return [p.strip() for p in re.split(r",|;|\band\b", value) if p.strip()]
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            if isinstance(v, str):
                out.append(v.strip())
            elif isinstance(v, dict):  # [{"name": "dog"}] style
                name = next((v[k] for k in ("name", "object", "label") if isinstance(v.get(k), str)), None)
                if name:
                    out.append(name.strip())
        return [o for o in out if o]
    return None


def _from_obj(obj) -> tuple[list[str] | None, bool]:
    """(items, exact_key) from a parsed JSON value."""
    if isinstance(obj, dict):
        if ANSWER_KEY in obj and isinstance(obj[ANSWER_KEY], list):
            items = _items(obj[ANSWER_KEY])
            return items, all(isinstance(v, str) and v.strip() for v in obj[ANSWER_KEY])
        norm = {re.sub(r"[ _-]", "", str(k).lower()): v for k, v in obj.items()}
        for alias in _KEY_ALIASES:
            if alias in norm and _items(norm[alias]) is not None:
                return _items(norm[alias]), False
        return None, False
    if isinstance(obj, list):
        return _items(obj), False
    return None, False


def _json_spans(text: str) -> list[str]:
    """Candidate JSON snippets: fenced blocks, then from each '{' (or '[') to the end/last closer."""
    spans = [m.group(1) for m in _FENCE.finditer(text)]
    # A bare list only when there is no object: inside an object the first list is
    # visible_objects, not the answer.
    for opener, closer in (("{", "}"),) if "{" in text else (("[", "]"),):
        start = text.find(opener)
        if start >= 0:
            end = text.rfind(closer)
            if end > start:
                spans.append(text[start:end + 1])
            spans.append(text[start:])  # truncated: closed by _close_truncated
    return spans


def nesting_depth(text: str) -> int:
    """Deepest bracket nesting in ``text`` (brackets inside strings counted too: an upper bound).

    >>> nesting_depth('{"a": [1, {"b": []}]}')
    4
    """
    depth = deepest = 0
    for ch in text:
        if ch in "[{(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]})" and depth:
            depth -= 1
    return deepest


def parse_answer(text: str) -> ParseResult:
    """Cue strings from a model answer, tolerating the usual mess; never raises (any string, any size)."""
    if not isinstance(text, str) or not text.strip():
        return ParseResult([], "malformed", "empty output")
    stripped = text.strip()[:MAX_CHARS]
    try:
        found = None if nesting_depth(stripped) > MAX_DEPTH else _parse_json(stripped)
    except (RecursionError, MemoryError):  # a safety net; the depth bound should keep both away
        found = None
    return found or _parse_lines(stripped)


def _parse_json(stripped: str) -> ParseResult | None:
    fenced = _FENCE.fullmatch(stripped)
    obj = _strict(fenced.group(1) if fenced else stripped)
    if obj is not None:
        items, exact = _from_obj(obj)
        if items is not None:
            return ParseResult(items, "ok" if exact else "repaired", "" if exact else "key or item shape fixed")
    decoder = json.JSONDecoder()
    for start in [m.start() for _, m in zip(range(8), re.finditer(r"\{", stripped))]:  # first object; text after it ignored
        try:
            obj, _ = decoder.raw_decode(stripped[start:])
        except ValueError:
            continue
        items, _ = _from_obj(obj)
        if items is not None:
            return ParseResult(items, "repaired", "JSON object extracted from text")
    for span in _json_spans(stripped):
        obj = _loose(span)
        if obj is None:
            continue
        items, _ = _from_obj(obj)
        if items is not None:
            return ParseResult(items, "repaired", "JSON extracted/fixed")
    return None


def _parse_lines(stripped: str) -> ParseResult:
    lines = stripped.splitlines()
    bullets = [m.group(1) for m in map(_BULLET.match, lines) if m]
    # A list of object names, not of sentences (a looping model numbers whole sentences).
    if bullets and all(len(b.split()) <= MAX_ITEM_WORDS for b in bullets):
        return ParseResult([b.strip(" .\"'`") for b in bullets if b.strip(" .\"'`")], "repaired", "bulleted list")
    for line in reversed(lines):
        m = _ANSWER_LINE.search(line)
        if m:
            items = _items(m.group(1).strip(" .[]\"'`"))
            if items:
                return ParseResult([i.strip(" \"'`") for i in items], "repaired", "answer line")
    return ParseResult([], "malformed", "no JSON, list or answer line found")


_VERDICT = re.compile(r"^\s*([^:;]{1,40}?)\s*:.*?\b(sounds|silent)\W*$", re.S)


def reasoning_verdicts(text: str) -> list[tuple[str, bool]] | None:
    """The per-object verdicts of a ``reason`` answer's reasoning, or None if it has none.

    The ``cot-v2`` reasoning is ``"object: what it is doing, sounds|silent; ..."``; each
    ``;``-separated part that ends in a verdict gives (object, sounds?).

    >>> reasoning_verdicts('{"reasoning": "dog: asleep, silent; bell: swinging, sounds", "sounding_objects": ["dog"]}')
    [('dog', False), ('bell', True)]
    """
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, ValueError, TypeError):
        return None
    reasoning = obj.get("reasoning") if isinstance(obj, dict) else None
    if not isinstance(reasoning, str):
        return None
    return _verdicts_of(reasoning)


def _verdicts_of(reasoning: str) -> list[tuple[str, bool]] | None:
    found = [(m.group(1).strip(), m.group(2) == "sounds") for m in map(_VERDICT.match, reasoning.split(";")) if m]
    return found or None


_REASONING_FIELD = re.compile(r'"reasoning"\s*:\s*"([^"]*)', re.S)


def parse_verdicts(text: str) -> ParseResult:
    """The cues of a ``verdicts`` answer (``{"reasoning": "a: ..., sounds; b: ..., silent"}``, no
    list): the objects judged "sounds". ``ok`` when the JSON is valid, ``repaired`` when the
    reasoning had to be cut out of broken JSON (a truncated answer), else ``malformed``; an answer
    whose every verdict is "silent" is readable with no item (the stage calls it ``empty``).

    >>> parse_verdicts('{"reasoning": "dog: asleep, silent; bell: swinging, sounds"}')
    ParseResult(items=['bell'], status='ok', note='')
    >>> parse_verdicts('{"reasoning": "dog: barking, sounds; cat: asle').status
    'repaired'
    """
    if not isinstance(text, str):
        return ParseResult([], "malformed", "empty output")
    found = reasoning_verdicts(text)
    status, note = "ok", ""
    if found is None:
        m = _REASONING_FIELD.search(text[:MAX_CHARS])
        found = _verdicts_of(m.group(1)) if m else None
        status, note = "repaired", "verdicts read from broken JSON"
    if found is None:
        return ParseResult([], "malformed", "no 'object: ..., sounds|silent' verdict found")
    return ParseResult([name for name, sounds in found if sounds], status, note)
