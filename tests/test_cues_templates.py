"""Prompt templates: rendering, versioning in the fingerprint, errors before any model loads."""
import json
import shutil

import pytest

from cues.backends import TransformersBackend
from cues.memo import Memo
from cues.normalize import Vocabulary, normalize_cue
from cues.sources import LLMCues
from cues.templates import PROMPT_DIR, TemplateError, answer_schema, load_template
from pipeline.cues import CueStage, parse_sets, run_cues
from pipeline.fingerprint import fingerprint
from tests.dummies_cues import CATEGORIES, FakeLLM, tiny_manifest


def test_shipped_templates_render():
    vocab = ["guitar", "man"]
    for name, fields in (("cot-v1", ("visible_objects", "reasoning", "sounding_objects")), ("direct-v1", ("sounding_objects",))):
        t = load_template(name)
        assert t.version == name and t.fields == fields
        msgs = t.messages("a man holds a guitar", vocab)
        assert msgs[0]["role"] == "system" and msgs[-1]["role"] == "user"
        assert '"a man holds a guitar"' in msgs[-1]["content"] and "guitar, man" in msgs[-1]["content"]
        assert [m["role"] for m in msgs[1:-1]] == ["user", "assistant"] * len(t.examples)
        assert "{" not in msgs[-1]["content"].replace('{"', "")  # no placeholder left unfilled
        open_msgs = t.messages("x", None)
        assert "Use only these names" not in open_msgs[-1]["content"]
        rep = t.repair_messages("a dog", "garbage output", vocab)[-1]["content"]
        assert "garbage output" in rep and '"a dog"' in rep


def test_v2_templates_keep_everything_but_the_caption_in_the_shared_prefix():
    """cot-v2/direct-v2: rules, names and examples come first; a caption changes only the last turn."""
    from cues.generation import shared_prefix_len

    vocab = ["guitar", "man"]
    for name, fields in (("cot-v2", ("reasoning", "sounding_objects")), ("direct-v2", ("sounding_objects",))):
        t = load_template(name)
        assert t.fields == fields
        a, b = t.messages("a man holds a guitar", vocab), t.messages("a dog barks", vocab)
        assert a[:-1] == b[:-1] and "guitar, man" in a[0]["content"] and "{" not in a[0]["content"]
        assert a[-1]["content"] == 'Description: "a man holds a guitar"'
        ta, tb = (repr(m).encode() for m in (a, b))
        assert shared_prefix_len([list(ta), list(tb)]) >= len(repr(a[:-1]))
    assert answer_schema(load_template("cot-v2").fields, vocab)["properties"]["reasoning"]["maxLength"] == 100
    assert load_template("cot-v2").max_reasoning_chars > 100


def test_v3_templates_share_rules_and_examples_and_cot_answers_with_verdicts_only():
    """cot-v3 answers with its verdicts alone (no list), held to "object: state, sounds|silent" parts;
    direct-v3 asks the same captions with the same rules, answer only."""
    import re

    from cues.parse import parse_verdicts

    cot, direct = load_template("cot-v3"), load_template("direct-v3")
    assert cot.fields == ("reasoning",) and direct.fields == ("sounding_objects",)
    assert [c for c, _ in cot.examples] == [c for c, _ in direct.examples]
    assert len(cot.examples) >= 5
    pattern = answer_schema(cot.fields, ["drums"])["properties"]["reasoning"]["pattern"]
    for (_, answer), (_, listed) in zip(cot.examples, direct.examples):
        reasoning = json.loads(answer)["reasoning"]
        assert re.fullmatch(pattern, reasoning), reasoning  # every worked example obeys the schema
        assert [normalize_cue(c) for c in parse_verdicts(answer).items] == \
            [normalize_cue(c) for c in json.loads(listed)["sounding_objects"]]  # and agrees with direct's answer
    # one verdict per object: two objects merged into one verdict, or one without a verdict, do not match
    assert not re.fullmatch(pattern, "guitar: being held, trumpet: being held, silent")
    assert not re.fullmatch(pattern, "guitar: being held; trumpet: lying, silent")
    assert re.fullmatch(pattern, "phone: screen on, sounds")
    assert "{" not in cot.messages("a dog", ["dog"])[0]["content"]


def test_cot_schema_puts_reasoning_before_the_answer():
    s = answer_schema(load_template("cot-v1").fields, ["dog", "man"], max_cues=3)
    assert list(s["properties"]) == ["visible_objects", "reasoning", "sounding_objects"]
    assert s["properties"]["sounding_objects"]["items"]["enum"] == ["dog", "man"]
    assert s["properties"]["sounding_objects"]["maxItems"] == 3
    assert "enum" not in answer_schema(("sounding_objects",), None)["properties"]["sounding_objects"]["items"]


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.replace("{caption}", "the caption", 1), r"lacks placeholder.*\{caption\}"),
    (lambda t: t.replace("Step 1:", "Step 1 {mood}:"), r"unknown placeholder.*\{mood\}"),
    (lambda t: t.replace("output: cot", "output: essay"), r"output 'essay'"),
    (lambda t: t.replace("version: cot-v1", "version: ''"), r"missing or empty 'version'"),
])
def test_bad_template_is_an_error(tmp_path, edit, match):
    bad = tmp_path / "bad.yaml"
    bad.write_text(edit((PROMPT_DIR / "cot-v1.yaml").read_text()))
    with pytest.raises(TemplateError, match=match):
        load_template(bad)
    with pytest.raises(TemplateError, match="not found"):
        load_template("no-such-template")


def _stage_fp(template_path):
    src = LLMCues(load_template(template_path), FakeLLM(), Vocabulary.for_categories(CATEGORIES), Memo("/nonexistent"))
    return fingerprint(CueStage(src).config())


def test_template_edit_changes_fingerprint(tmp_path):
    t = tmp_path / "t.yaml"
    shutil.copy(PROMPT_DIR / "cot-v1.yaml", t)
    before = _stage_fp(t)
    assert _stage_fp(t) == before
    t.write_text(t.read_text().replace("reason briefly", "think briefly"))
    assert _stage_fp(t) != before
    assert _stage_fp("direct-v1") != _stage_fp("cot-v1")


def test_errors_before_any_model_loads(tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr(TransformersBackend, "load", lambda self: loads.append(1))
    man = tiny_manifest(tmp_path)
    from pipeline.captions import run_captions

    run_captions(dataset="tiny", manifest=man, cache_root=tmp_path / "cache", captioner="reference", progress=False)
    with pytest.raises(ValueError, match="unknown backend 'llama'"):
        run_cues(dataset="tiny", manifest=man, cache_root=tmp_path / "cache", sets="x=llama:cot-v1", progress=False)
    with pytest.raises(ValueError, match="unknown LLM backend"):
        parse_sets("cot", llm_backend="ollama")
    bad = tmp_path / "bad.yaml"
    bad.write_text((PROMPT_DIR / "cot-v1.yaml").read_text().replace("{caption}", "it"))
    with pytest.raises(TemplateError):
        run_cues(dataset="tiny", manifest=man, cache_root=tmp_path / "cache", sets=f"vocab,x=transformers:{bad}", progress=False)
    assert loads == []
    assert not (tmp_path / "cache" / "tiny" / "cues").exists()  # nothing ran, not even the vocab set


def test_v4_keeps_v3_form_and_examples_order_and_names_the_object_not_its_holder():
    """cot-v4 (measured, not the default: docs/cues.md) is cot-v3 with a naming rule and one example
    rewritten ("someone holding a cell phone"); every worked example still obeys the verdict schema
    and judges the same objects "sounds" as v3's, sounding objects first."""
    import re

    from cues.parse import parse_verdicts

    v3, v4 = load_template("cot-v3"), load_template("cot-v4")
    assert v4.fields == v3.fields and len(v4.examples) == len(v3.examples)
    pattern = answer_schema(v4.fields, ["phone"])["properties"]["reasoning"]["pattern"]
    for (_, a3), (caption, a4) in zip(v3.examples, v4.examples):
        assert re.fullmatch(pattern, json.loads(a4)["reasoning"]), a4
        assert parse_verdicts(a4).items == parse_verdicts(a3).items, caption
        assert json.loads(a4)["reasoning"].split(";")[0].endswith("sounds")
    assert any("someone holding" in c for c, _ in v4.examples)
    assert "never the room" in v4.messages("a dog", ["dog"])[0]["content"]
