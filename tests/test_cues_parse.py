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
