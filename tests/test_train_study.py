"""`make study`'s library function on a tiny dataset: 2 variants x 2 seeds x 1 epoch write all three files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from manifests.schema import read_manifest
from pipeline.store import write_cache
from tests.dummies_train import TinySpec, tiny_config, write_tiny_dataset
from train.study import StudyError, build_parser, cue_tag_of, fit_args, inputs_stamp, job_argv, parse_variant, run_study
from train.study_eval import ROW_KEYS
from train.study_report import probe_markdown

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _negative_caches(root: Path, manifest: Path) -> None:
    """The mute and off-screen audio caches the study reads, beside the tiny dataset's normal one."""
    frames = read_manifest(manifest).frames
    keys = frames[["uid", "frame_idx"]].assign(split=frames["split"])
    rng = np.random.default_rng(1)
    for tag, audio in {"mute": np.zeros((len(frames), 6), np.float16),
                       "offscreen": rng.standard_normal((len(frames), 6)).astype(np.float16)}.items():
        write_cache(root / "cache", "tiny", "audio", keys, {"audio": audio},
                    card={"encoder": {"name": "yamnet"}, "perturb": tag}, tag=tag)


def test_study_two_seeds_one_epoch_writes_json_md_png(tmp_path):
    spec = TinySpec(clips={"train": 4, "val": 2, "test": 4})
    manifest = write_tiny_dataset(tmp_path, spec=spec)
    _negative_caches(tmp_path, manifest)
    # the cue rows of the `cot` set: even clips (bias_consistent) cue their guitar, odd ones (counter_bias) miss it
    cue_rows = read_manifest(manifest).frames[["uid", "frame_idx"]].reset_index(drop=True)
    cue_rows["cues"] = [["guitar"] if int(u[-3:]) % 2 == 0 else ["piano"] for u in cue_rows.uid]
    cue_rows["failure"] = ""
    write_cache(tmp_path / "cache", "tiny", "cues", cue_rows, {}, tag="cot", card={"cue_set": "cot"})
    cfg = tiny_config(tmp_path, manifest, spec=spec, max_epochs=1)
    configs = [str(CONFIGS / "trainer/cpu.yaml"), str(CONFIGS / "model/{model}.yaml"), str(cfg)]
    out = tmp_path / "reports" / "study"
    data = run_study(variants=["teso", "audio_only"], seeds=2, configs=configs, cache_root=None,
                     runs_dir=tmp_path / "runs", out_dir=out, jobs=2, progress=False)
    assert {p.name for p in out.iterdir()} >= {"study.json", "study.md", "study.png"}
    assert not data["meta"]["failed"], data["meta"]["failed"]
    rows = pd.DataFrame(json.loads((out / "study.json").read_text())["rows"])
    assert list(rows.columns) == list(ROW_KEYS)
    assert set(rows.seed) == {0, 1} and set(rows.variant) == {"teso", "audio_only"}
    # controls for the model that reads cues only; one row per run, control and slice
    assert set(rows[rows.variant == "teso"].control) == {"none", "shuffled", "no_cues"}
    assert set(rows[rows.variant == "audio_only"].control) == {"none"}
    assert set(rows.slice) == {"all", "bias_consistent", "counter_bias"}
    assert len(rows) == (3 + 1) * 2 * 3
    assert rows[["miou_normal", "fscore_normal", "empty_rate_mute", "fpr_offscreen"]].apply(
        lambda c: c.between(0, 100)).all().all()
    md = (out / "study.md").read_text()
    assert "## Goals (issue 13)" in md and "## Per seed" in md and md.count("| teso | shuffled |") >= 3
    assert (out / "study.png").stat().st_size > 10_000
    # the on-screen probe of every run, not measured on data without visible-object maps
    assert sorted((p["variant"], p["seed"]) for p in data["meta"]["probes"]) == \
        [("audio_only", 0), ("audio_only", 1), ("teso", 0), ("teso", 1)]
    assert all("miou" not in p for p in data["meta"]["probes"]) and "## On-screen swap probe" in md
    # the seed reaches the training: other seed, other weights
    weights = [(tmp_path / "runs" / f"teso-s{s}" / "export" / "model.safetensors").read_bytes() for s in (0, 1)]
    assert weights[0] != weights[1]
    # where the cues miss: teso's counter-bias frames are all missed, its bias-consistent ones all cued;
    # the per-frame IoUs give back the study's own slice mIoUs (same frames, same clip-then-frame mean)
    cov = pd.DataFrame(data["meta"]["coverage"])
    assert set(cov.variant) == {"teso"} and set(cov.cue_set) == {"cot"} and not data["meta"]["coverage_notes"]
    part = cov.set_index(["seed", "slice", "part"])
    none = rows[rows.control == "none"].set_index(["variant", "seed", "slice"])
    for s in (0, 1):
        assert part.loc[(s, "counter_bias", "cued"), "frames"] == 0 and part.loc[(s, "counter_bias", "missed"), "share"] == 100
        assert part.loc[(s, "bias_consistent", "missed"), "frames"] == 0
        assert part.loc[(s, "counter_bias", "missed"), "miou"] == pytest.approx(none.loc[("teso", s, "counter_bias"), "miou_normal"])
        assert part.loc[(s, "counter_bias", "missed"), "miou_baseline"] == pytest.approx(
            none.loc[("audio_only", s, "counter_bias"), "miou_normal"])
        assert part.loc[(s, "bias_consistent", "cued"), "miou"] == pytest.approx(
            none.loc[("teso", s, "bias_consistent"), "miou_normal"])
    assert "## Where the cues miss" in md and "| teso (`cot`) | counter_bias | missed | 100 |" in md
    # a rerun with unchanged inputs reuses every finished job
    stamp = (tmp_path / "runs" / "teso-s0" / "rows.json").stat().st_mtime_ns
    assert data["meta"]["reused"] == 0 and "**met**: make study <= 25 min" in md
    again = run_study(variants=["teso", "audio_only"], seeds=2, configs=configs, cache_root=None,
                      runs_dir=tmp_path / "runs", out_dir=out, jobs=2, progress=False)
    assert (tmp_path / "runs" / "teso-s0" / "rows.json").stat().st_mtime_ns == stamp
    # ... and says so: its wall time does not measure the time goal
    assert again["meta"]["reused"] == 4 and "not measured: make study <= 25 min" in (out / "study.md").read_text()
    # scoring the validation split (to choose settings) re-scores the same runs without training them again
    trained = (tmp_path / "runs" / "teso-s0" / "export" / "model.safetensors").stat().st_mtime_ns
    val = run_study(variants=["teso", "audio_only"], seeds=2, configs=configs, cache_root=None, runs_dir=tmp_path / "runs",
                    out_dir=tmp_path / "reports" / "val", jobs=2, progress=False, split="val")
    assert val["meta"]["split"] == "val" and not val["meta"]["failed"]
    assert val["meta"]["reused"] == 4  # rescored, not trained: its wall time is no measure of the time goal
    assert json.loads((tmp_path / "runs" / "teso-s0" / "rows.json").read_text())["split"] == "val"
    assert "Validation split" in (tmp_path / "reports" / "val" / "study.md").read_text()
    assert (tmp_path / "runs" / "teso-s0" / "export" / "model.safetensors").stat().st_mtime_ns == trained
    assert len(val["rows"]) == (3 + 1) * 2 * 3  # val000 bias_consistent, val001 counter_bias


def test_job_argv_round_trips_train_args_without_spaces(tmp_path):
    # a fit argument with no space (a JSON dict) used to reach the child as its own token, which
    # argparse took for an unknown option: every job failed before training
    for extra in (['--data.train_negatives={"mute":0.1}'], ["--trainer.max_epochs", "1"], []):
        argv = job_argv("teso:active", 2, runs_dir=tmp_path, configs=["a.yaml", "b.yaml"], controls=["none"],
                        cache_root="cache", train_args=extra, cues=None, split="val")
        a = build_parser().parse_args(argv)
        assert (a.one, a.seed, a.split, a.cache_root, a.configs) == ("teso:active", 2, "val", "cache", "a.yaml,b.yaml")
        assert a.train_args.split() == extra


def test_variant_specs_and_bad_input(tmp_path):
    assert parse_variant("teso:active") == ("teso", "active") and parse_variant("teso") == ("teso", None)
    args = fit_args("teso:active", 2, configs=["configs/model/{model}.yaml"], runs_dir=tmp_path, cache_root="c")
    assert args[args.index("--data.cues_tag") + 1] == "active" and args[args.index("--seed_everything") + 1] == "2"
    assert args[args.index("--data.seed") + 1] == "2" and args[args.index("--run_name") + 1] == "teso-active-s2"
    plain = fit_args("teso", 0, configs=["configs/model/{model}.yaml"], runs_dir=tmp_path, cache_root=None, cues="vocab")
    assert plain[plain.index("--data.cues_tag") + 1] == "vocab"  # the study's cue set for variants without one
    own = fit_args("teso:active", 0, configs=["configs/model/{model}.yaml"], runs_dir=tmp_path, cache_root=None, cues="vocab")
    assert own[own.index("--data.cues_tag") + 1] == "active"
    with pytest.raises(StudyError, match="nosuchmodel"):
        run_study(variants=["nosuchmodel"], seeds=1, runs_dir=tmp_path, out_dir=tmp_path)


def test_stamp_counts_the_runs_own_cue_set_only(tmp_path):
    """A new cue set (another variant's) leaves finished runs reusable; their own inputs do not."""
    root = tmp_path / "cache"

    def point(stage: str, name: str, fp: str) -> None:
        (root / "ds" / stage).mkdir(parents=True, exist_ok=True)
        (root / "ds" / stage / name).write_text(json.dumps({"fingerprint": fp}))

    for stage, name in [("audio", "latest-none.json"), ("visual", "latest.json"), ("cues", "latest-cot.json"),
                        ("text", "latest-cot.json"), ("text", "latest-vocab.json")]:
        point(stage, name, "a")
    cfg = tmp_path / "data.yaml"
    cfg.write_text("data:\n  cues_tag: cot\n")
    args = ["fit", "--config", str(cfg), "--seed_everything", "0"]
    assert cue_tag_of(args) == "cot" and cue_tag_of([*args, "--data.cues_tag", "vocab"]) == "vocab"
    assert cue_tag_of(["fit"]) == "cot"  # the data module's default
    before = inputs_stamp(args, str(root))
    point("cues", "latest-cot15.json", "b")
    point("text", "latest-cot15.json", "b")
    point("text", "latest-vocab.json", "b")
    assert inputs_stamp(args, str(root)) == before  # other cue sets: reuse
    vocab = inputs_stamp([*args, "--data.cues_tag", "vocab"], str(root))
    point("text", "latest-vocab.json", "c")
    assert inputs_stamp([*args, "--data.cues_tag", "vocab"], str(root)) != vocab  # its own set: retrain
    point("text", "latest-cot.json", "b")
    assert inputs_stamp(args, str(root)) != before
    again = inputs_stamp(args, str(root))
    point("audio", "latest-none.json", "b")
    assert inputs_stamp(args, str(root)) != again  # every non-cue pointer still counts


def test_probe_table_gives_mean_std_and_each_seed():
    probes = [{"variant": "teso", "seed": s, "split": "val", "miou": m, "empty_rate": e, "clips": 38}
              for s, m, e in [(1, 30.0, 10.0), (0, 20.0, 30.0)]] + [{"variant": "audio_only", "seed": 0}]
    md = "\n".join(probe_markdown(probes))
    assert "| teso | 38 | 25.0 ± 7.1 | 20.0 ± 14.1 | 20.0 / 30.0 |" in md  # seeds in order
    assert "audio_only" not in md  # its run had no probe (no maps): no row rather than zeros
    assert "Not measured" in "\n".join(probe_markdown([{"variant": "teso", "seed": 0}]))


def test_delta_m_goal_says_when_a_listening_baseline_caps_the_ratio():
    import pandas as pd

    from train.study_report import goals, summarise

    def rows(base_dm):
        return pd.DataFrame([{"variant": v, "control": "none", "seed": s, "slice": "all", "miou_normal": 50.0,
                              "miou_mute": 0.0, "delta_m_mute": dm, "fscore_normal": 60.0, "empty_rate_mute": 90.0,
                              "fpr_offscreen": 20.0}
                             for v, dm in (("teso", 95.0), ("audio_only", base_dm)) for s in (0, 1)])
    listening = next(g for g in goals(summarise(rows(93.7)), 10.0) if g["goal"].startswith("mute Δm"))
    assert listening["met"] is False and "at most 100 / 93.7 = 1.07" in listening["numbers"]
    deaf = next(g for g in goals(summarise(rows(20.0)), 10.0) if g["goal"].startswith("mute Δm"))
    assert deaf["met"] is True and "out of reach" not in deaf["numbers"]


def test_study_header_names_the_cue_sets_the_runs_read():
    from train.study_report import _cue_sets_phrase

    assert _cue_sets_phrase({"variants": ["teso", "audio_only"]}) == "cue set of the data config (`cot` by default)"
    assert _cue_sets_phrase({"variants": ["teso"], "cues": "vocab"}) == "cue set `vocab`"
    assert _cue_sets_phrase({"variants": ["teso:vocab"]}) == "each variant's cue set after its ':'"
    mixed = _cue_sets_phrase({"variants": ["teso", "teso:active"], "cues": "config"})
    assert mixed.startswith("cue set of the data config") and "after ':'" in mixed


def test_other_text_variants_get_the_goals_against_the_same_baseline(tmp_path):
    from train.study_report import write_study

    def run(variant, seed, cb):
        rows = [{"variant": variant, "control": "none", "seed": seed, "slice": sl, "miou_normal": m,
                 "miou_mute": 0.0, "delta_m_mute": 100.0, "fscore_normal": 60.0, "empty_rate_mute": 100.0,
                 "fpr_offscreen": 20.0} for sl, m in (("all", 50.0), ("counter_bias", cb))]
        return {"rows": rows, "parameters": 1}
    results = [run("teso:vocab", s, cb) for s, cb in ((0, 40.0), (1, 42.0))] + \
              [run("audio_only", s, cb) for s, cb in ((0, 30.0), (1, 31.0))]
    data = write_study(results, tmp_path, {"wall_seconds": 60.0, "variants": ["teso:vocab", "audio_only"],
                                           "seeds": 2, "jobs": 2})
    assert all(g["met"] is None for g in data["meta"]["goals"][:1])  # no plain `teso` in this study
    cb_goal = data["meta"]["goals_other"]["teso:vocab"][0]
    assert cb_goal["met"] is True and "difference +10.50" in cb_goal["numbers"]
    assert "paired by seed +10.50 ± 0.71, positive on 2 of 2 seeds" in cb_goal["numbers"]  # +10 and +11
    assert "audio_only" not in data["meta"]["goals_other"]
    assert not any(g["goal"].startswith("make study") for g in data["meta"]["goals_other"]["teso:vocab"])
    assert data["meta"]["goals"][-1]["goal"].startswith("make study")  # the study's own time goal, once
    md = (tmp_path / "study.md").read_text()
    assert "### The same goals for `teso:vocab` in place of `teso`" in md and "difference +10.50" in md


def test_paired_difference_uses_the_seeds_both_variants_ran():
    from train.study_report import paired_difference

    rows = pd.DataFrame([{"variant": v, "control": c, "seed": s, "slice": "counter_bias", "miou_normal": m}
                         for v, c, s, m in [("teso", "none", 0, 30.0), ("teso", "none", 1, 20.0), ("teso", "none", 2, 50.0),
                                            ("audio_only", "none", 0, 25.0), ("audio_only", "none", 1, 24.0),
                                            ("teso", "shuffled", 0, 0.0)]])
    mean, std, positive, n = paired_difference(rows, "teso", "audio_only", "counter_bias", "miou_normal")
    assert (n, positive) == (2, 1) and mean == pytest.approx(0.5) and std == pytest.approx(np.std([5.0, -4.0], ddof=1))
    assert paired_difference(rows, "teso", "nobody", "counter_bias", "miou_normal") is None
