"""The tolerant parser on a corpus of messy, real-looking LLM outputs (tests/fixtures/cues_llm_outputs.jsonl)."""
import json
from pathlib import Path

import pytest

from cues.parse import parse_answer

CORPUS = [json.loads(line) for line in (Path(__file__).parent / "fixtures" / "cues_llm_outputs.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("case", CORPUS, ids=[c["text"][:30] for c in CORPUS])
def test_corpus(case):
    r = parse_answer(case["text"])
    assert (r.status, r.items) == (case["status"], case["items"])


def test_corpus_covers_every_status_and_shape():
    statuses = {c["status"] for c in CORPUS}
    assert statuses == {"ok", "repaired", "malformed"}
    texts = " ".join(c["text"] for c in CORPUS)
    for marker in ("```", "'sounding_objects'", ",]", "\n- ", "1. ", "Answer:"):
        assert marker in texts


@pytest.mark.parametrize("text", [None, 3, "{" * 500, "[" * 500 + "]", '{"sounding_objects": [1, 2]}'])
def test_never_raises(text):
    r = parse_answer(text)
    assert r.status in ("ok", "repaired", "malformed")
    assert all(isinstance(i, str) for i in r.items)


DEEP = [o * n + c * m for n in (1000, 10_000, 200_000) for o, c, m in (("{", "", 0), ("[", "]", n), ('{"a":', "}", n))]


@pytest.mark.parametrize("text", DEEP + ['{"sounding_objects": ["dog"], "x": ' + "[" * 5000 + "]" * 5000 + "}",
                                         "```" * 100_000, "- dog\n" * 500_000, "{" + "'a'," * 300_000])
def test_never_raises_on_deep_or_huge_inputs(text):
    """Nesting far past the json module's recursion limit and multi-megabyte answers (cut at MAX_CHARS)."""
    import time

    t0 = time.perf_counter()
    r = parse_answer(text)
    assert r.status in ("ok", "repaired", "malformed") and all(isinstance(i, str) for i in r.items)
    assert time.perf_counter() - t0 < 5


def test_never_raises_on_random_bytes():
    import random

    rng = random.Random(0)
    alphabet = '{}[]()"\',:`\\-* \n0123456789abcdefgh'
    for i in range(300):
        n = rng.choice([1, 10, 100, 2000])
        raw = bytes(rng.randrange(256) for _ in range(n))
        texts = [raw.decode("latin-1"), raw.decode("utf-8", "replace"), "".join(rng.choice(alphabet) for _ in range(n))]
        for text in texts:
            r = parse_answer(text)
            assert r.status in ("ok", "repaired", "malformed") and all(isinstance(i, str) for i in r.items)


def test_deep_nesting_beyond_the_bound_still_reads_a_bulleted_answer():
    r = parse_answer("[" * 100 + "\n- dog\n- man")
    assert r.items == ["dog", "man"] and r.status == "repaired"
