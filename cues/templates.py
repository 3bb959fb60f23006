"""Versioned prompt templates (data files under ``cues/prompts/``) and the answer schema.

A template is a YAML file with ``version``, ``output`` (``cot`` or ``direct``: which fields
the answer schema has), ``system``, ``user``, optional few-shot ``examples`` and a ``repair``
prompt used once when an answer does not parse. Placeholders are ``{name}``; the set each part
needs is fixed below, and a template that lacks one (or uses an unknown one) is an error at
load time, before any model loads. The version and a hash of the file's text go into the cue
stage's fingerprint, so editing a template never reuses stale cues.

>>> t = load_template("direct-v1")
>>> t.version, t.output
('direct-v1', 'direct')
>>> t.messages("a man plays a guitar", ["guitar", "man"])[-1]["content"].splitlines()[0]
'Description: "a man plays a guitar"'
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.fingerprint import text_hash

PROMPT_DIR = Path(__file__).parent / "prompts"
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
# Placeholders each part must contain, and may contain; anything else is a typo. The vocabulary
# hint goes in the system prompt or in the user turn (at least one): in the system prompt it is
# part of the prompts' shared prefix, computed once for all captions.
REQUIRED = {"system": set(), "user": {"caption"}, "repair": {"caption", "raw_output"}}
ALLOWED = {"system": {"vocabulary_hint"}, "user": {"caption", "vocabulary_hint"},
           "repair": {"caption", "raw_output", "vocabulary_hint"}}
# ``reason``: one reasoning string (a verdict per object) before the answer; ``cot``: the
# objects listed, then the reasoning, then the answer; ``verdicts``: the reasoning only (the cues
# are the objects it judges "sounds", so no list is generated); ``direct``: the answer only.
OUTPUTS = {"cot": ("visible_objects", "reasoning", "sounding_objects"), "reason": ("reasoning", "sounding_objects"),
           "verdicts": ("reasoning",), "direct": ("sounding_objects",)}
# A ``verdicts`` reasoning is held to "object: what it does, sounds|silent" parts joined by "; ",
# so a small model cannot merge several objects into one verdict ("guitar: held, trumpet: held,
# silent") or leave one without a verdict.
_PART = r"[A-Za-z][A-Za-z' -]{0,23}: [^:;,\"\\\n]{1,60}, (sounds|silent)"
VERDICTS_PATTERN = rf"^{_PART}(; {_PART}){{0,5}}$"
ANSWER_KEY = "sounding_objects"


class TemplateError(ValueError):
    """A prompt template is missing, malformed, or has a missing/unknown placeholder."""


def vocabulary_hint(vocabulary: list[str] | None) -> str:
    """The sentence telling the model which names to use (closed) or how to name (open)."""
    if vocabulary:
        return "Use only these names: " + ", ".join(vocabulary) + "."
    return "Use short object names (one or two words each)."


def _fill(text: str, values: dict[str, str]) -> str:
    # Only {lower_case} names are placeholders, so JSON examples ({"key": ...}) pass through.
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


@dataclass(frozen=True)
class PromptTemplate:
    """One loaded template. ``text_hash`` hashes the whole file (any edit changes it)."""

    version: str
    output: str
    system: str
    user: str
    repair: str
    examples: tuple[tuple[str, str], ...]
    source: str
    text_hash: str
    max_reasoning_chars: int = 100

    @property
    def fields(self) -> tuple[str, ...]:
        return OUTPUTS[self.output]

    def _conversation(self, user: str, vocabulary: list[str] | None) -> list[dict[str, str]]:
        hint = vocabulary_hint(vocabulary)
        msgs = [{"role": "system", "content": _fill(self.system, {"vocabulary_hint": hint}).strip()}]
        for caption, answer in self.examples:
            msgs.append({"role": "user", "content": _fill(self.user, {"caption": caption, "vocabulary_hint": hint}).strip()})
            msgs.append({"role": "assistant", "content": answer})
        msgs.append({"role": "user", "content": user})
        return msgs

    def messages(self, caption: str, vocabulary: list[str] | None) -> list[dict[str, str]]:
        """The chat conversation asking for the cues of one caption."""
        user = _fill(self.user, {"caption": caption, "vocabulary_hint": vocabulary_hint(vocabulary)}).strip()
        return self._conversation(user, vocabulary)

    def repair_messages(self, caption: str, raw_output: str, vocabulary: list[str] | None,
                        *, max_chars: int = 300) -> list[dict[str, str]]:
        """The one retry after an unparseable answer (the bad answer quoted, shortened)."""
        user = _fill(self.repair, {"caption": caption, "raw_output": raw_output.strip()[:max_chars] or "(empty)",
                                   "vocabulary_hint": vocabulary_hint(vocabulary)}).strip()
        return self._conversation(user, vocabulary)

    def config(self) -> dict[str, str]:
        return {"version": self.version, "text_hash": self.text_hash}


def _check(part: str, text: str, source: str) -> None:
    found = set(_PLACEHOLDER.findall(text))
    missing, unknown = REQUIRED[part] - found, found - ALLOWED[part]
    if missing:
        raise TemplateError(f"{source}: '{part}' lacks placeholder(s) {sorted('{' + m + '}' for m in missing)}")
    if unknown:
        raise TemplateError(f"{source}: '{part}' has unknown placeholder(s) {sorted('{' + u + '}' for u in unknown)}; "
                            f"allowed {sorted('{' + r + '}' for r in ALLOWED[part])}")


def load_template(name_or_path: str | Path) -> PromptTemplate:
    """Load ``cues/prompts/<name>.yaml`` or a YAML file path, checking every placeholder."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROMPT_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PROMPT_DIR.glob("*.yaml"))
        raise TemplateError(f"{path}: prompt template not found; shipped templates: {known}")
    text = path.read_text()
    try:
        raw: dict[str, Any] = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise TemplateError(f"{path}: expected a mapping with version/output/system/user/repair")
    for key in ("version", "output", "system", "user", "repair"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise TemplateError(f"{path}: missing or empty '{key}'")
    if raw["output"] not in OUTPUTS:
        raise TemplateError(f"{path}: output {raw['output']!r} is not one of {sorted(OUTPUTS)}")
    for part in REQUIRED:
        _check(part, raw[part], str(path))
    if not any("{vocabulary_hint}" in raw[part] for part in ("system", "user")):
        raise TemplateError(f"{path}: neither 'system' nor 'user' has the placeholder {{vocabulary_hint}}")
    examples = []
    for i, ex in enumerate(raw.get("examples") or []):
        if not isinstance(ex, dict) or not {"caption", "answer"} <= set(ex):
            raise TemplateError(f"{path}: example {i} needs 'caption' and 'answer'")
        examples.append((str(ex["caption"]), str(ex["answer"])))
    return PromptTemplate(version=raw["version"], output=raw["output"], system=raw["system"], user=raw["user"],
                          repair=raw["repair"], examples=tuple(examples), source=str(path), text_hash=text_hash(text),
                          max_reasoning_chars=int(raw.get("max_reasoning_chars", 100)))


def answer_schema(fields: tuple[str, ...], vocabulary: list[str] | None, *, max_cues: int = 4,
                  max_visible: int = 6, max_name_chars: int = 24, max_reasoning_chars: int = 100) -> dict[str, Any]:
    """JSON schema of the answer; the reasoning field comes before ``sounding_objects``.

    Closed vocabulary: the answer's names are an enum of the dataset's categories, while
    ``visible_objects`` stays free text, so step 1 lists what the description says in its own
    words instead of copying the category list. The length bounds keep a small model from
    looping until ``max_new_tokens`` (xgrammar/vLLM enforce them).

    >>> list(answer_schema(OUTPUTS["cot"], ["dog"])["properties"])
    ['visible_objects', 'reasoning', 'sounding_objects']
    """
    free: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": max_name_chars}
    name = {"type": "string", "enum": list(vocabulary)} if vocabulary else free
    props = {
        "visible_objects": {"type": "array", "items": free, "maxItems": max_visible},
        "reasoning": ({"type": "string", "pattern": VERDICTS_PATTERN} if ANSWER_KEY not in fields
                      else {"type": "string", "maxLength": max_reasoning_chars}),
        "sounding_objects": {"type": "array", "items": name, "maxItems": max_cues},
    }
    return {"type": "object", "properties": {f: props[f] for f in fields}, "required": list(fields),
            "additionalProperties": False}
