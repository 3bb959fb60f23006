"""Where a frame's cues come from: an LLM asked with a template, or a baseline without one.

* :class:`LLMCues`: template -> backend (``transformers``/``vllm``) -> tolerant parse -> one
  repair retry -> normalisation; every distinct question goes through the :class:`~cues.memo.Memo`.
* :class:`VocabMatchCues`: the category names (and synonyms) found in the caption, no LLM.
* :class:`ActiveCues` (SynthAVS only): every object the scene draws as active, i.e. all a
  perfect reader of the caption can know (the ceiling of caption-derived cues).
* :class:`OracleCues`: the ground-truth sounding labels of the frame; it gives the answer away,
  so it bounds the model, not the cues.

Each source turns a micro-batch of caption rows into cue rows with the same columns:
``prompt_version, model, raw_output, repair_output, cues, parse_status, memo_key``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import sys
import time
from typing import Any, Callable

from tqdm.auto import tqdm

from cues.backends import LLMBackend
from cues.memo import Memo, memo_key
from cues.normalize import DEFAULT_MAX_CUES, Vocabulary, normalize_cues
from cues.parse import parse_answer, parse_verdicts, reasoning_verdicts
from cues.templates import ANSWER_KEY, OUTPUTS, PromptTemplate, answer_schema
from cues.verdict_score import METHOD as SCORING_METHOD, VERDICT_MODES, VerdictScoring, scored_items
from pipeline.fingerprint import canonical_json, text_hash

SOURCES = ("transformers", "vllm", "vocab-match", "active", "oracle")
# Bumped when normalize.py changes what a cue list looks like (part of the fingerprint).
NORMALIZATION_VERSION = "norm-v1"
SCENES_FILE = "clips.jsonl"  # SynthAVS's per-clip scene records (objects and their drawn state)


@dataclass
class CueAnswer:
    """One frame's result, before it becomes a Parquet row."""

    cues: list[str]
    parse_status: str
    raw_output: str = ""
    repair_output: str = ""
    memo_key: str = ""


def _final_status(status: str, cues: list[str]) -> str:
    # "empty": the answer was readable but no cue is left after normalisation.
    return "empty" if status in ("ok", "repaired") and not cues else status


@dataclass
class LLMCues:
    """Cues from a frozen LLM. ``closed``: the schema's names are an enum of ``vocabulary``."""

    template: PromptTemplate
    backend: LLMBackend
    vocabulary: Vocabulary
    memo: Memo
    closed: bool = True
    structured: bool = True
    repair: bool = True
    max_cues: int = DEFAULT_MAX_CUES
    verdicts: str = "greedy"  # or "scored": verdict words from next-token margins (cues.verdict_score)
    rule: VerdictScoring = field(default_factory=VerdictScoring)
    asked: int = 0          # questions this process sent to the LLM (memo misses, de-duplicated)
    rows_seen: int = 0
    score_seconds: float = 0.0  # this process's time in the verdict-scoring pass
    _settings: dict[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.verdicts not in VERDICT_MODES:
            raise ValueError(f"verdicts {self.verdicts!r}: choose one of {list(VERDICT_MODES)}")

    @property
    def scoring(self) -> bool:
        """Scored verdicts: asked for, a ``verdicts`` template, and a backend that gives margins
        (the vllm backend does not: it keeps the greedy verdicts, and its fingerprint says so)."""
        return (self.verdicts == "scored" and self.template.output == "verdicts"
                and hasattr(self.backend, "score_verdicts"))

    @property
    def prompt_vocabulary(self) -> list[str] | None:
        return self.vocabulary.names if self.closed else None

    def schema(self, fields: tuple[str, ...]) -> dict[str, Any] | None:
        if not self.structured:
            return None
        return answer_schema(fields, self.prompt_vocabulary, max_cues=self.max_cues,
                             max_reasoning_chars=self.template.max_reasoning_chars)

    def settings(self) -> dict[str, Any]:
        """Everything that decides the raw answer (memo key and fingerprint)."""
        if self._settings is None:
            self._settings = {"template": self.template.config(), "llm": self.backend.config(),
                              "structured": self.structured, "vocabulary": "closed" if self.closed else "open",
                              "prompt_vocabulary_hash": text_hash(canonical_json(self.prompt_vocabulary)),
                              "repair": self.repair}
            if self.scoring:  # the margins are memoised with the answer
                self._settings["verdict_scoring"] = SCORING_METHOD
        return self._settings

    def config(self) -> dict[str, Any]:
        answer = "reasoning verdicts" if self.template.output in ("reason", "verdicts") else ANSWER_KEY
        # The synonym table maps the answers' names onto the categories after the memo, so an edit
        # to it changes the cues (not the raw answers): it is in the fingerprint, not the memo key.
        vocab_hash = text_hash(canonical_json(self.vocabulary.table)) if self.closed else None
        config = {"source": self.backend.name, **self.settings(), "max_cues": self.max_cues, "answer": answer,
                  "map_to_vocabulary": self.closed, "vocabulary_hash": vocab_hash, "normalization": NORMALIZATION_VERSION}
        if self.scoring:  # the decision rule reads the memoised margins: in the fingerprint, not the memo key
            config["verdict_rule"] = self.rule.config()
        return config  # greedy verdicts (also a backend that cannot score): the fingerprint of before

    def items(self, res: dict[str, Any]) -> list[str]:
        """The cue phrases of an answer. A ``reason`` answer's are the objects its reasoning
        judges "sounds": small models often list every object after judging some silent
        (a 0.5B model: "dogs: lying asleep, silent" then ["dogs"]), so the verdicts, not the
        list, are the chain of thought's conclusion; the list counts when no verdict is readable."""
        if self.template.output == "reason":
            verdicts = reasoning_verdicts(res["raw_output"])
            if verdicts is not None:
                return [name for name, sounds in verdicts if sounds]
        if self.scoring and res.get("verdict_margins"):
            scored = scored_items(res["raw_output"], res["verdict_margins"], self.rule)
            if scored is not None:
                return scored
        return res["items"]

    def key(self, caption: str) -> str:
        # The answer cap (max_cues) is part of the schema, hence of the key, via settings+schema.
        return memo_key({"caption": caption, **self.settings(), "schema": self.schema(self.template.fields)})

    def _ask(self, captions: list[str], on_answer: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
        """Answer distinct captions: generate, parse, one repair round for malformed answers."""
        vocab = self.prompt_vocabulary
        convs = [self.template.messages(c, vocab) for c in captions]
        raws = self.backend.chat(convs, self.schema(self.template.fields), on_answer)
        parse = parse_verdicts if self.template.output == "verdicts" else parse_answer
        results = [{"raw_output": r, "repair_output": "", **vars(parse(r))} for r in raws]
        if self.scoring:
            t0 = time.perf_counter()
            for res, margins in zip(results, self.backend.score_verdicts(convs, raws)):
                res["verdict_margins"] = [list(m) for m in margins] if margins else None
            self.score_seconds += time.perf_counter() - t0
        bad = [i for i, r in enumerate(results) if r["status"] == "malformed"]
        if self.repair and bad:
            convs = [self.template.repair_messages(captions[i], results[i]["raw_output"], vocab) for i in bad]
            for i, r in zip(bad, self.backend.chat(convs, self.schema(OUTPUTS["direct"]))):
                p = parse_answer(r)
                results[i].update(repair_output=r, items=p.items, note=f"repair prompt: {p.note}",
                                  status="repaired" if p.status != "malformed" else "malformed")
        return results

    def _ask_new(self, todo: dict[str, str], on_answer: Callable[[int], None] | None = None) -> dict[str, dict[str, Any]]:
        """Ask memo misses ``{key: caption}`` in one LLM call; memoise and count them."""
        answers = dict(zip(todo, self._ask(list(todo.values()), on_answer))) if todo else {}
        for k, res in answers.items():
            self.memo.put(k, res)
        self.asked += len(todo)
        return answers

    def warm(self) -> None:
        """Load the model and compile the answer's grammar now (:mod:`cues.parallel` forks after it)."""
        self.backend.warm(self.schema(self.template.fields))

    def missing(self, captions: list[str]) -> dict[str, str]:
        """``{memo key: caption}`` of the distinct captions whose answer the memo lacks."""
        todo: dict[str, str] = {}
        for c in dict.fromkeys(captions):
            k = self.key(c)
            if k not in todo and k not in self.memo:
                todo[k] = c
        return todo

    def ask_ahead(self, captions: list[str], *, chunk: int, progress: bool = False, note: str = "") -> int:
        """Ask every distinct caption the memo lacks, ``chunk`` per LLM call; returns how many.

        The runner's micro-batches hold few new captions each (a clip's frames share theirs,
        and later batches are mostly memo hits), too few to fill a batched decoder; asked here
        in large calls first, :meth:`answer` then finds them all in the memo. Each call's
        answers are memoised when it returns, so a killed run keeps them. ``note`` ends the
        progress bar's label.
        """
        todo = self.missing(captions)
        keys = list(todo)
        label = f"{self.template.version} {self.backend.config()['model'].split(':')[-1]}{note}"
        with tqdm(total=len(keys), desc=f"asking {label}", unit="caption", disable=not progress or not keys,
                  file=sys.stderr, smoothing=0.1) as bar:
            for b in range(0, len(keys), chunk):
                self._ask_new({k: todo[k] for k in keys[b:b + chunk]}, lambda _i: bar.update(1))
        return len(keys)

    def answer(self, captions: list[str]) -> list[CueAnswer]:
        keys = [self.key(c) for c in captions]
        known: dict[str, dict[str, Any]] = {}
        todo: dict[str, str] = {}
        for k, c in zip(keys, captions):
            if k in known or k in todo:
                continue
            hit = self.memo.get(k)
            if hit is not None:
                known[k] = hit
            else:
                todo[k] = c
        known.update(self._ask_new(todo))
        self.rows_seen += len(captions)
        out = []
        for k in keys:
            res = known[k]
            vocabulary = self.vocabulary if self.closed else None
            cues = normalize_cues(self.items(res), k=self.max_cues, vocabulary=vocabulary)
            out.append(CueAnswer(cues, _final_status(res["status"], cues), res["raw_output"], res["repair_output"], k))
        return out


def _vocabulary_source_config(source: "VocabMatchCues | ActiveCues | OracleCues") -> dict[str, Any]:
    """Fingerprinted config of a cue source that needs no model: its name, vocabulary and K."""
    return {"source": source.name, "vocabulary_hash": text_hash(canonical_json(source.vocabulary.table)),
            "max_cues": source.max_cues, "normalization": NORMALIZATION_VERSION}


@dataclass
class VocabMatchCues:
    """Baseline: category names and synonyms mentioned in the caption (no LLM)."""

    vocabulary: Vocabulary
    max_cues: int = DEFAULT_MAX_CUES
    name: str = "vocab-match"

    def config(self) -> dict[str, Any]:
        return _vocabulary_source_config(self)

    def answer(self, captions: list[str]) -> list[CueAnswer]:
        out = []
        for c in captions:
            cues = self.vocabulary.find_in_text(c)[:self.max_cues]
            out.append(CueAnswer(cues, "ok" if cues else "empty"))
        return out


@dataclass
class OracleCues:
    """Upper bound: the frame's ground-truth sounding labels, mapped onto the vocabulary."""

    vocabulary: Vocabulary
    max_cues: int = DEFAULT_MAX_CUES
    name: str = "oracle"

    def config(self) -> dict[str, Any]:
        return _vocabulary_source_config(self)

    def answer_labels(self, labels: list[list[str]]) -> list[CueAnswer]:
        out = []
        for lab in labels:
            cues = self.vocabulary.map_labels(list(lab))[:self.max_cues]
            out.append(CueAnswer(cues, "ok" if cues else "empty"))
        return out


@dataclass
class ActiveCues:
    """Ceiling of caption-derived cues (SynthAVS): the objects each clip's scene draws as active.

    SynthAVS draws every sounding object active and half of the silent ones too (a hand on a
    silent guitar); its caption says which objects look active, never which sound. A reader
    of the caption can at best name all active objects, so this is what it can know.
    ``scenes`` maps a clip uid to its ``{category: "active"|"idle"}`` objects (``clips.jsonl``).
    """

    vocabulary: Vocabulary
    scenes: dict[str, dict[str, str]]
    max_cues: int = DEFAULT_MAX_CUES
    name: str = "active"

    @classmethod
    def from_manifest(cls, manifest, vocabulary: Vocabulary, *, max_cues: int = DEFAULT_MAX_CUES) -> "ActiveCues":
        """Read the scene records beside the SynthAVS data (``<data_root>/clips.jsonl``)."""
        import json
        from pathlib import Path

        path = Path(manifest.data_root) / SCENES_FILE
        if not path.is_file():
            raise ValueError(f"cue set 'active' needs SynthAVS's scene records: {path} is missing (manifest "
                             f"{manifest.path}); use it with the SynthAVS manifest only (make data)")
        scenes = {}
        for line in path.read_text().splitlines():
            if line.strip():
                clip = json.loads(line)
                scenes[clip["uid"]] = clip["objects"]
        return cls(vocabulary, scenes, max_cues=max_cues)

    def config(self) -> dict[str, Any]:
        return _vocabulary_source_config(self)

    def answer_uids(self, uids: list[str]) -> list[CueAnswer]:
        out = []
        for uid in uids:
            if uid not in self.scenes:
                raise KeyError(f"clip {uid!r} has no scene record")
            active = [c for c, state in self.scenes[uid].items() if state == "active"]
            cues = self.vocabulary.map_labels(active)[:self.max_cues]
            out.append(CueAnswer(cues, "ok" if cues else "empty"))
        return out
