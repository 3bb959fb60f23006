"""The cue stage: memo, repair, statuses, tables readable by `datasets`, kill-and-resume, sharding."""
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cues.memo import Memo
from cues.normalize import Vocabulary
from cues.sources import LLMCues, OracleCues, VocabMatchCues
from cues.templates import load_template
from manifests.schema import read_manifest
from pipeline.captions import run_captions
from pipeline.cues import CueStage, cue_items, dataset_vocabulary, read_cues, run_cues
from cues.evaluate import report_path
from pipeline.runner import latest, read_card, read_stage, run_stage
from tests.dummies_cues import CATEGORIES, SCENES, FakeLLM, tiny_manifest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def world(tmp_path):
    """8 clips x 3 frames, 4 distinct captions, reference captions already run."""
    man = tiny_manifest(tmp_path, clips=8, frames=3)
    cache = tmp_path / "cache"
    run_captions(dataset="tiny", manifest=man, cache_root=cache, captioner="reference", progress=False)
    m = read_manifest(man)
    caps = read_stage(latest(cache, "tiny", "captions"))
    return {"manifest": man, "m": m, "cache": cache, "items": cue_items(m, caps), "tmp": tmp_path}


def _run(world, source, tag="cot", **kw):
    return run_stage(CueStage(source, batch_size=kw.pop("batch_size", 5)), world["items"], cache_root=world["cache"],
                     dataset="tiny", inputs={"captions": "fixed"}, tag=tag, progress=False, **kw)


def _answer_by_scene(prompt: str) -> str:
    if "could not be read" in prompt:  # the repair prompt: fixes the drums scene, not the dog scene
        return '{"sounding_objects": ["drums"]}' if "Two drums" in prompt else "still nothing"
    if "man playing a guitar" in prompt:
        return '{"visible_objects": ["man", "guitar", "dog"], "reasoning": "he plays", "sounding_objects": ["guitar", "man"]}'
    if "woman sings" in prompt:
        return "Sure! ```json\n{'sounding_objects': ['woman',]}\n```"
    if "Two drums" in prompt:
        return "I am not sure."  # malformed; the repair prompt fixes it
    return "nothing useful"  # the dog scene stays malformed even after the repair prompt


def test_llm_cues_memo_repair_and_statuses(world):
    fake = FakeLLM(_answer_by_scene)
    memo = Memo(world["tmp"] / "memo")
    vocab = dataset_vocabulary(world["m"])
    src = LLMCues(load_template("cot-v1"), fake, vocab, memo)
    res = _run(world, src)
    rows = read_stage(res.out_dir)
    assert len(rows) == 24 and res.n_failed == 0
    # 4 distinct captions -> 4 questions, + 2 repair prompts (drums, dog): each asked once for 24 rows
    assert sum(fake.calls) == 6
    by_cap = rows.groupby("caption").first()
    assert by_cap.loc[SCENES[0][0], "cues"].tolist() == ["guitar", "man"]
    assert by_cap.loc[SCENES[0][0], "parse_status"] == "ok"
    assert by_cap.loc[SCENES[1][0], "parse_status"] == "repaired"
    assert by_cap.loc[SCENES[2][0], "parse_status"] == "repaired"  # via the repair prompt
    assert by_cap.loc[SCENES[2][0], "repair_output"] == '{"sounding_objects": ["drums"]}'
    assert by_cap.loc[SCENES[3][0], "parse_status"] == "malformed"
    assert by_cap.loc[SCENES[3][0], "raw_output"] == "nothing useful"  # raw output kept
    assert set(rows["prompt_version"]) == {"cot-v1"} and set(rows["model"]) == {"fake-llm"}
    card = read_card(res.out_dir)
    assert card["memo"]["distinct_questions"] == 4
    assert card["memo"]["hit_rate"] == pytest.approx(1 - 4 / 24)
    assert card["parse_status"] == {"ok": 6, "repaired": 12, "malformed": 6, "empty": 0}
    # A new stage directory (other shard size) with the same questions: all memo hits, no LLM call.
    fake2 = FakeLLM(_answer_by_scene)
    res2 = _run(world, LLMCues(load_template("cot-v1"), fake2, vocab, Memo(world["tmp"] / "memo")), shard_size=7)
    assert res2.out_dir != res.out_dir and fake2.calls == [] and fake2.loaded == 0  # nothing to ask: no load
    assert read_stage(res2.out_dir)["cues"].map(list).tolist() == rows["cues"].map(list).tolist()
    assert read_card(res2.out_dir)["memo"]["this_run"]["hit_rate"] == 1.0
    # Another template is another question.
    fake3 = FakeLLM(_answer_by_scene)
    _run(world, LLMCues(load_template("direct-v1"), fake3, vocab, Memo(world["tmp"] / "memo")), tag="direct")
    assert sum(fake3.calls) == 6


def test_second_run_loads_nothing(world):
    fake = FakeLLM()
    src = LLMCues(load_template("direct-v1"), fake, dataset_vocabulary(world["m"]), Memo(world["tmp"] / "memo"))
    _run(world, src)
    assert fake.loaded == 1
    again = _run(world, src)
    assert again.skipped and fake.loaded == 1


def _fails_in_a_worker(prompt: str) -> str:
    if multiprocessing.parent_process() is not None:
        raise RuntimeError("this worker process broke")
    return _answer_by_scene(prompt)


def _asked_captions(fake: FakeLLM) -> set[str]:
    """The captions a fake LLM was asked about (repair prompts left out)."""
    return {m.group(1) for p in fake.prompts if "could not be read" not in p
            for m in [re.match(r'Description: "(.*)"', p)] if m}


@pytest.mark.parametrize("answer", [_answer_by_scene, _fails_in_a_worker])
def test_ask_jobs_split_the_captions_between_processes(world, monkeypatch, capsys, answer):
    monkeypatch.setattr("cues.parallel.MIN_PER_JOB", 1)  # 4 distinct captions: worth 2 processes here
    vocab = dataset_vocabulary(world["m"])
    alone = read_stage(_run(world, LLMCues(load_template("cot-v1"), FakeLLM(_answer_by_scene), vocab,
                                           Memo(world["tmp"] / "memo-1"))).out_dir)
    fake = FakeLLM(answer)
    src = LLMCues(load_template("cot-v1"), fake, vocab, Memo(world["tmp"] / "memo-2"))
    res = run_stage(CueStage(src, batch_size=5, ask_jobs=2), world["items"], cache_root=world["cache"],
                    dataset="tiny", inputs={"captions": "two processes"}, tag="cot", progress=False)
    rows = read_stage(res.out_dir)
    keep = ["uid", "frame_idx", "raw_output", "repair_output", "parse_status"]
    assert rows[keep].equals(alone[keep]) and rows["cues"].map(list).equals(alone["cues"].map(list))
    assert read_card(res.out_dir)["memo"]["this_run"]["asked_llm"] == 4  # both processes' questions
    # loaded and its answer grammar compiled once, before the fork (the worker inherits both)
    assert fake.warmed == [src.schema(src.template.fields)] and fake.warmed[0] is not None
    if answer is _answer_by_scene:  # this process asked its share only, the worker the other
        assert len(_asked_captions(fake)) == 2
        assert "asked 4 distinct captions ahead in 2 processes" in capsys.readouterr().err
    else:  # the worker failed: this process asked the worker's share too
        assert len(_asked_captions(fake)) == 4
        assert "1 of 1 asking processes failed" in capsys.readouterr().err


def test_baselines_and_tables_open_with_datasets(world, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vocab = dataset_vocabulary(world["m"])
    assert vocab.names == CATEGORIES
    v = read_stage(_run(world, VocabMatchCues(vocab), tag="vocab").out_dir)
    assert v.groupby("caption")["cues"].first().map(list).to_dict()[SCENES[0][0]] == ["man", "guitar", "dog"]
    o = _run(world, OracleCues(vocab), tag="oracle")
    assert read_stage(o.out_dir)["cues"].map(list).tolist() == world["items"]["labels"].tolist()
    import datasets

    for d in (o.out_dir, world["cache"] / "tiny" / "captions"):
        files = sorted(str(p) for p in Path(d).rglob("shard-*.parquet"))
        ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
        assert len(ds) == 24
    assert set(ds.column_names) >= {"uid", "frame_idx", "caption", "captioner", "failure"}
    ds = datasets.load_dataset("parquet", data_files=str(o.out_dir / "shard-*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert set(ds.column_names) >= {"uid", "frame_idx", "caption", "prompt_version", "model", "raw_output", "cues",
                                    "parse_status", "failure"}
    assert isinstance(ds[0]["cues"], list) and all(isinstance(c, str) for c in ds[0]["cues"])


def test_run_cues_prints_table_and_writes_reports(world, capsys):
    from pipeline.cues import main

    main(["--dataset", "tiny", "--manifest", str(world["manifest"]), "--cache-root", str(world["cache"]),
          "--sets", "vocab,oracle", "--no-progress"])
    out = capsys.readouterr().out
    assert "cue quality" in out and "vocab" in out and "oracle" in out
    rep = json.loads(report_path(read_card_dir(world, "oracle")).read_text())
    assert rep["f1"] == 1.0 and rep["silent_cued"] == 0.0
    assert len(read_cues(world["cache"], "tiny", "vocab")) == 24


def test_second_evaluation_reuses_the_report_until_card_or_manifest_change(world, monkeypatch):
    """A finished set's quality report is reused while its card and the manifest are unchanged
    (a second `make cues` scores nothing); a changed card is scored again."""
    import cues.evaluate as ev
    from pipeline.cues import main

    argv = ["--dataset", "tiny", "--manifest", str(world["manifest"]), "--cache-root", str(world["cache"]),
            "--sets", "oracle", "--no-progress"]
    main(argv)
    d = read_card_dir(world, "oracle")
    first = json.loads(report_path(d).read_text())
    calls = []
    real = ev.cue_quality
    monkeypatch.setattr(ev, "cue_quality", lambda *a, **k: calls.append(1) or real(*a, **k))
    main(argv)
    assert calls == [] and json.loads(report_path(d).read_text()) == first
    card = json.loads((d / "card.json").read_text())
    card["healed_note"] = "rows were recomputed"
    (d / "card.json").write_text(json.dumps(card))
    main(argv)
    assert calls and json.loads(report_path(d).read_text())["inputs_key"] != first["inputs_key"]


def read_card_dir(world, tag):
    return latest(world["cache"], "tiny", "cues", tag)


def test_failed_caption_rows_are_kept(world):
    items = world["items"].copy()
    items.loc[3, "caption_failure"] = "img.jpg: unreadable image"
    res = run_stage(CueStage(VocabMatchCues(dataset_vocabulary(world["m"]))), items, cache_root=world["cache"],
                    dataset="tiny", inputs={"captions": "other"}, tag="vocab", progress=False)
    rows = read_stage(res.out_dir)
    assert len(rows) == 24 and res.n_failed == 1
    assert "unreadable image" in rows.loc[3, "failure"] and list(rows.loc[3, "cues"]) == []


def test_shards_split_between_processes(world):
    vocab = dataset_vocabulary(world["m"])
    kw = dict(cache_root=world["cache"], dataset="tiny", inputs={"captions": "split"}, tag="vocab", progress=False,
              shard_size=5)
    a = run_stage(CueStage(VocabMatchCues(vocab)), world["items"], num_shards=2, shard_index=0, **kw)
    assert not a.complete and sorted(p.name for p in a.out_dir.glob("shard-*.parquet")) == \
        ["shard-00000.parquet", "shard-00002.parquet", "shard-00004.parquet"]
    b = run_stage(CueStage(VocabMatchCues(vocab)), world["items"], num_shards=2, shard_index=1, **kw)
    assert b.complete and b.n_rows == 24


def test_kill_and_resume_gives_the_rows_of_a_clean_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "tests.dummies_cues", "slow-cues", "--n", "240", "--shard-size", "8"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--cache-root", str(killed), "--delay", "0.02"], cwd=ROOT, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        shards = list(killed.rglob("shard-*.parquet"))
        if len(shards) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out_dir = next(killed.rglob("shard-00000.parquet")).parent
    n_before = len(list(out_dir.glob("shard-*.parquet")))
    assert 3 <= n_before < 30 and not (out_dir / ".completed").exists()
    subprocess.run(cmd + ["--cache-root", str(killed), "--delay", "0"], cwd=ROOT, env=env, check=True)
    clean = tmp_path / "clean"
    subprocess.run(cmd + ["--cache-root", str(clean), "--delay", "0"], cwd=ROOT, env=env, check=True)
    clean_dir = next(clean.rglob("shard-00000.parquet")).parent
    assert clean_dir.name == out_dir.name  # same fingerprint
    a, b = read_stage(out_dir), read_stage(clean_dir)
    assert len(a) == 240
    pd.testing.assert_frame_equal(a, b)
    assert not list(out_dir.glob("*.tmp-*"))


def test_active_cues_are_the_objects_drawn_active(world, capsys):
    from pipeline.cues import default_sets, main

    assert "active" not in default_sets(world["m"])  # no scene records: not SynthAVS
    with pytest.raises(ValueError, match="clips.jsonl"):
        run_cues(dataset="tiny", sets="active", manifest=world["manifest"], cache_root=world["cache"], progress=False)
    # scene records as SynthAVS writes them: the first scene's guitar and man drawn active, its dog idle
    states = {0: {"man": "active", "guitar": "active", "dog": "idle"}, 1: {"woman": "active", "piano": "active"},
              2: {"drums": "active", "man": "idle"}, 3: {"dog": "active", "piano": "active"}}
    lines = [json.dumps({"uid": f"c{c:03d}", "objects": states[c % 4]}) for c in range(8)]
    (Path(world["m"].data_root) / "clips.jsonl").write_text("\n".join(lines) + "\n")
    assert default_sets(world["m"]).endswith(",active")
    main(["--dataset", "tiny", "--manifest", str(world["manifest"]), "--cache-root", str(world["cache"]),
          "--sets", "active", "--no-progress"])
    rows = read_cues(world["cache"], "tiny", "active")
    got = rows.groupby("uid")["cues"].first().map(list).to_dict()
    assert got["c000"] == ["man", "guitar"] and got["c003"] == ["dog", "piano"] and got["c006"] == ["drums"]
    rep = json.loads(report_path(read_card_dir(world, "active")).read_text())
    assert rep["recall"] == 1.0 and rep["precision"] < 1.0  # every source is drawn active, not every active object sounds


def test_verdicts_answers_have_no_list_and_count_as_ok_empty_or_repaired(world):
    """cot-v3: the answer is the verdicts alone; a truncated one is repaired, one with no verdict is
    asked again with the repair prompt (which asks for the plain list)."""
    def answer(prompt):
        if "previous answer" in prompt:  # the repair prompt (it lists every name, so it is matched first)
            return '{"sounding_objects": ["drums"]}'
        if "guitar" in prompt:
            return '{"reasoning": "man: singing, sounds; guitar: being played, sounds; dog: asleep, silent"}'
        if "woman" in prompt:
            return '{"reasoning": "woman: singing, sounds; piano: clo'  # cut off mid-verdict
        if "drum" in prompt:
            return '{"reasoning": "a drum"}'  # no verdict: the repair prompt answers
        return '{"reasoning": "dog: asleep, silent"}'

    llm = FakeLLM(answer)
    src = LLMCues(load_template("cot-v3"), llm, dataset_vocabulary(world["m"]), Memo(world["tmp"] / "memo3"))
    assert src.config()["answer"] == "reasoning verdicts"
    rows = read_stage(_run(world, src).out_dir)
    by_caption = rows.groupby("caption").first()
    got = by_caption["cues"].map(list).to_dict()
    status = by_caption["parse_status"].to_dict()
    assert got[SCENES[0][0]] == ["man", "guitar"] and status[SCENES[0][0]] == "ok"
    assert got[SCENES[1][0]] == ["woman"] and status[SCENES[1][0]] == "repaired"
    assert got[SCENES[2][0]] == ["drums"] and status[SCENES[2][0]] == "repaired"
    assert sum("previous answer" in p for p in llm.prompts) == 1


def test_reason_answers_are_read_from_the_verdicts(world):
    """cot-v2: the cues are the objects the reasoning judges "sounds", not the list after it."""
    def answer(prompt):
        if "guitar" in prompt:  # judged right, listed wrong: the list names the sleeping dog too
            return '{"reasoning": "man: playing, sounds; guitar: being played, sounds; dog: asleep, silent", ' \
                   '"sounding_objects": ["man", "guitar", "dog"]}'
        if "woman" in prompt:  # reasoning without verdicts: the list counts
            return '{"reasoning": "a woman sings", "sounding_objects": ["woman"]}'
        return '{"reasoning": "drums: lying, silent; man: lying, silent", "sounding_objects": ["drums"]}'

    src = LLMCues(load_template("cot-v2"), FakeLLM(answer), dataset_vocabulary(world["m"]), Memo(world["tmp"] / "memo"))
    assert src.config()["answer"] == "reasoning verdicts"
    rows = read_stage(_run(world, src).out_dir)
    got = rows.groupby("caption")["cues"].first().map(list).to_dict()
    assert got[SCENES[0][0]] == ["man", "guitar"] and got[SCENES[1][0]] == ["woman"] and got[SCENES[2][0]] == []
    assert set(rows.loc[rows["caption"] == SCENES[2][0], "parse_status"]) == {"empty"}


def test_a_synonym_edit_renews_a_verdicts_set_from_the_memo(world, tmp_path):
    """The synonym table maps answers onto the categories after the memo: editing it must give a
    new cue set (not "already complete" with the old mapping) without asking the LLM again."""
    def answer(prompt):
        return '{"reasoning": "drumsticks: raised above the drum, sounds; man: asleep, silent"}'

    plain, with_sticks = tmp_path / "plain.yaml", tmp_path / "sticks.yaml"
    plain.write_text("drum: [drum kit]\n")
    with_sticks.write_text("drum: [drum kit, drumstick]\n")
    llm, memo = FakeLLM(answer), Memo(world["tmp"] / "memo-syn")
    first = LLMCues(load_template("cot-v3"), llm, Vocabulary.for_categories(CATEGORIES, synonyms=plain), memo)
    r1 = _run(world, first)
    asked = len(llm.prompts)
    second = LLMCues(load_template("cot-v3"), llm, Vocabulary.for_categories(CATEGORIES, synonyms=with_sticks), memo)
    r2 = _run(world, second)
    assert r2.out_dir != r1.out_dir and not r2.skipped
    assert len(llm.prompts) == asked  # every answer came from the memo
    assert {tuple(c) for c in read_stage(r1.out_dir)["cues"]} == {()}
    assert {tuple(c) for c in read_stage(r2.out_dir)["cues"]} == {("drums",)}
