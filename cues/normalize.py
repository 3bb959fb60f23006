"""Cue normalisation and the label vocabulary (synonyms, dataset quirks).

``normalize_cue`` turns an LLM's phrase into a short lower-case singular noun phrase:
articles, counts and trailing clauses go ("the two men playing guitars" -> "man").
``Vocabulary`` maps such phrases onto a dataset's category names (AVSBench spelling, with
the index's quirks like ``h orse``); evaluation, vocab-match and oracle cues use it.

>>> normalize_cue("The two Men playing guitars")
'man'
>>> normalize_cues(["a dog", "Dogs", "an old piano", "bell", "cat", "cow"], k=4)
['dog', 'old piano', 'bell', 'cat']
>>> v = Vocabulary.from_file("avsbench")
>>> [v.map(c) for c in ("puppy", "hair dryer", "h orse", "barking dog", "table", "background")]
['dog', 'hair-dryer', 'horse', 'dog', None, None]
>>> v.find_in_text("A puppy sleeps while a police car passes and a hair dryer runs")
['dog', 'emergency-car', 'hair-dryer']
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

VOCAB_DIR = Path(__file__).parent / "vocab"
DEFAULT_MAX_CUES = 4  # the public code keeps 4 cue tokens per frame (teso-method.md §1)

_DETERMINERS = {"a", "an", "the", "some", "several", "many", "few", "few", "couple", "pair", "of", "his", "her",
                "their", "its", "this", "that", "these", "those", "one", "two", "three", "four", "five", "six",
                "seven", "eight", "nine", "ten", "multiple", "various", "other", "another", "each", "both", "all"}
# Words that end the noun phrase: what follows describes it ("man playing a guitar" -> "man").
_CLAUSE = {"with", "on", "in", "at", "near", "next", "beside", "behind", "under", "over", "by", "from", "of",
           "that", "who", "which", "while", "and", "or", "is", "are", "was", "being", "to", "for", "into", "onto"}
_IRREGULAR = {"men": "man", "women": "woman", "children": "child", "people": "person", "geese": "goose",
              "mice": "mouse", "feet": "foot", "teeth": "tooth", "oxen": "ox", "sheep": "sheep", "fish": "fish",
              "deer": "deer", "dice": "die", "knives": "knife", "wolves": "wolf", "calves": "calf", "leaves": "leaf",
              "policemen": "policeman", "firemen": "fireman"}
_NO_STRIP = ("ss", "us", "is", "ics")  # bass, bus, chassis, acoustics stay as they are


def singular(word: str) -> str:
    """English singular of one lower-case word (rules plus irregulars; conservative).

    >>> [singular(w) for w in ("drums", "buses", "geese", "harmonicas", "bass", "ponies", "glass")]
    ['drum', 'bus', 'goose', 'harmonica', 'bass', 'pony', 'glass']
    """
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 3 or word.endswith(_NO_STRIP):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "zes", "sses", "uses")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", text.lower())


def normalize_cue(text: str) -> str:
    """Short singular lower-case noun phrase from an LLM cue; '' if nothing is left."""
    words = _words(text)
    while words and (words[0] in _DETERMINERS or words[0].isdigit()):
        words = words[1:]
    for i, w in enumerate(words):
        # A clause word, or an -ing verb after the head noun ("dog barking"), ends the phrase.
        if i > 0 and (w in _CLAUSE or (w.endswith("ing") and len(w) > 4)):
            words = words[:i]
            break
    words = [w for w in words if w not in _DETERMINERS or w in ("one",)][:3]
    if not words:
        return ""
    return " ".join(words[:-1] + [singular(words[-1])])


def normalize_cues(items: list[str], *, k: int = DEFAULT_MAX_CUES, vocabulary: "Vocabulary | None" = None) -> list[str]:
    """Normalise, map onto ``vocabulary`` if given (dropping unmapped cues), de-duplicate, keep ``k``."""
    out: list[str] = []
    for item in items:
        cue = normalize_cue(item)
        if cue and vocabulary is not None:
            cue = vocabulary.map(cue) or ""
        if cue and cue not in out:
            out.append(cue)
    return out[:k]


@dataclass
class Vocabulary:
    """Category names plus a phrase -> name table (synonyms, aliases, spelling variants)."""

    names: list[str]
    table: dict[str, str] = field(default_factory=dict)
    ignore: set[str] = field(default_factory=set)

    @classmethod
    def for_categories(cls, categories: list[str], *, synonyms: Path | None = VOCAB_DIR / "synonyms.yaml",
                       aliases: dict[str, str] | None = None, ignore: list[str] = ()) -> "Vocabulary":
        """Vocabulary over ``categories``; synonyms whose target is not a category are skipped."""
        names = [c for c in dict.fromkeys(categories) if c not in ignore]
        table: dict[str, str] = {}
        syn = yaml.safe_load(synonyms.read_text()) if synonyms else {}
        for name in names:
            for phrase in [name, name.replace("-", " "), *(syn.get(name) or syn.get(singular(name)) or [])]:
                table.setdefault(" ".join(_words(phrase)), name)
                table.setdefault(normalize_cue(phrase), name)
        for alias, name in (aliases or {}).items():
            table[" ".join(_words(alias))] = name
            table[alias.lower()] = name
        return cls(names=names, table={k: v for k, v in table.items() if k}, ignore=set(ignore))

    @classmethod
    def from_file(cls, path: str | Path, **kw) -> "Vocabulary":
        """A vocabulary YAML (``categories``, ``aliases``, ``ignore``), e.g. ``cues/vocab/avsbench.yaml``."""
        path = Path(path)
        if not path.suffix:
            path = VOCAB_DIR / f"{path}.yaml"
        raw = yaml.safe_load(path.read_text())
        return cls.for_categories(raw["categories"], aliases=raw.get("aliases"), ignore=raw.get("ignore") or [], **kw)

    def map(self, cue: str) -> str | None:
        """Category name for a cue phrase, or None (tries the phrase, then its words right to left)."""
        low = cue.lower().strip()
        if low in self.ignore:
            return None
        for key in (low, " ".join(_words(low)), normalize_cue(low)):
            if key in self.table:
                return self.table[key]
        words = _words(normalize_cue(low) or low)
        for n in (2, 1):  # two-word synonyms ("hair dryer") before single words, head noun last
            for i in range(len(words) - n, -1, -1):
                key = " ".join(words[i:i + n])
                hit = self.table.get(key) or self.table.get(singular(key) if n == 1 else key)
                if hit:
                    return hit
        return None

    def map_labels(self, labels: list[str]) -> list[str]:
        """Ground-truth labels onto the vocabulary (quirks fixed, unknown names kept as given)."""
        out = []
        for label in labels:
            if label.lower() in self.ignore:
                continue
            name = self.map(label) or label.lower()
            if name not in out:
                out.append(name)
        return out

    def find_in_text(self, text: str) -> list[str]:
        """Category names mentioned in free text (synonyms and plurals too), in order of mention."""
        words = [singular(w) for w in _words(text)]
        found: list[tuple[int, str]] = []
        used: set[int] = set()  # longest phrase first: "police car" is not also a "car"
        for n in (3, 2, 1):
            for i in range(len(words) - n + 1):
                name = self.table.get(" ".join(words[i:i + n]))
                if name and used.isdisjoint(range(i, i + n)):
                    used.update(range(i, i + n))
                    if all(name != f for _, f in found):
                        found.append((i, name))
        return [name for _, name in sorted(found)]


def dataset_vocabulary(manifest) -> Vocabulary:
    """The label vocabulary of a :class:`~manifests.schema.Manifest`: its ``categories`` metadata,
    else ``cues/vocab/<dataset>.yaml``, else every label in it. AVSBench's quirks (``h orse``)
    are mapped in all cases."""
    avs = yaml.safe_load((VOCAB_DIR / "avsbench.yaml").read_text())
    cats = manifest.meta.get("categories")
    if cats:
        names = [c["name"] if isinstance(c, dict) else str(c) for c in cats]
        return Vocabulary.for_categories(names, aliases=avs.get("aliases"), ignore=avs.get("ignore") or [])
    dataset = str(manifest.frames["dataset"].iloc[0]) if len(manifest.frames) else manifest.path.stem
    yaml_vocab = VOCAB_DIR / f"{dataset}.yaml"
    if yaml_vocab.exists():
        return Vocabulary.from_file(yaml_vocab)
    labels = sorted({str(x) for col in ("labels", "visible_labels") for v in manifest.frames[col] for x in v})
    return Vocabulary.for_categories(labels, aliases=avs.get("aliases"), ignore=avs.get("ignore") or [])
