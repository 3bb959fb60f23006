"""LightningCLI fits on a tiny cache: every model variant, AVSS, bad input (NaN loss, dims, unknown keys)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pipeline.store import FeatureStoreError
from tests.dummies_train import TinySpec, tiny_config, write_tiny_dataset
from train.cli import main
from train.data import FeatureCacheError
from train.module import NonFiniteLossError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
VARIANTS = ["teso", "audio_only", "no_dynamic_mask", "no_infonce", "official"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_fit")
    manifest = write_tiny_dataset(root, cue_tags=("cot", "oracle", "vocab"))
    return root, tiny_config(root, manifest)


def fit_args(root: Path, cfg: Path, *extra: str, model: str = "teso", run: str = "run") -> list[str]:
    return ["fit", "--config", str(CONFIGS / "trainer/cpu.yaml"), "--config", str(CONFIGS / f"model/{model}.yaml"),
            "--config", str(cfg), "--runs_dir", str(root / "runs"), "--run_name", run, *extra]


@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_dev_run_per_variant(tiny, variant):
    root, cfg = tiny
    cli = main(fit_args(root, cfg, "--trainer.fast_dev_run", "true", model=variant, run=f"fdr-{variant}"))
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert cli.model.weights["infonce"] == (0.0 if variant in ("audio_only", "no_infonce", "official") else 0.1)
    assert cli.model.net.prompt_mode == {"audio_only": "audio_only", "official": "official"}.get(variant, "sedam")


@pytest.mark.parametrize("experiment,tag", [("oracle_cues", "oracle"), ("vocab_cues", "vocab")])
def test_cue_set_experiments_read_their_text_cache(tiny, experiment, tag):
    root, cfg = tiny
    cli = main(fit_args(root, cfg, "--config", str(CONFIGS / f"experiment/{experiment}.yaml"),
                        "--trainer.fast_dev_run", "true", run=f"fdr-{experiment}"))
    assert cli.config.fit.variant == experiment
    assert cli.datamodule.cache_dir("text").parent.joinpath(f"latest-{tag}.json").exists()
    assert cli.datamodule._stores["text"].card["cues"] == tag


def test_avss_semantic_fit_uses_class_loss(tiny):
    root, cfg = tiny
    cli = main(fit_args(root, cfg, "--data.class_masks", "true", "--model.net.init_args.num_classes", "3",
                        "--model.net.init_args.semantic", "true", "--trainer.fast_dev_run", "true", run="avss"))
    assert cli.model.set_criterion is not None
    assert "train/loss_class" in cli.trainer.logged_metrics


def test_fit_writes_run_layout_and_pointer(tiny):
    root, cfg = tiny
    latest = root / "runs" / "latest.json"
    cli = main(fit_args(root, cfg, "--trainer.max_epochs", "1", "--latest_json", str(latest), run="layout"))
    run = root / "runs" / "layout"
    for rel in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "config.yaml", "export/model.safetensors",
                "export/config.yaml", "logs/version_0/metrics.csv"):
        assert (run / rel).exists(), rel
    assert list((run / "tb").rglob("events.out.tfevents.*"))
    import json
    info = json.loads(latest.read_text())
    assert info["run_dir"] == str(run) and info["variant"] == "teso" and info["export"] == str(run / "export")
    header = (run / "logs/version_0/metrics.csv").read_text().splitlines()[0]
    assert "train/frames_per_s_epoch" in header and "val/miou" in header and "val/score" in header
    assert cli.trainer.checkpoint_callback.monitor == "val/score"
    assert info["best_val_score"] == pytest.approx(float(cli.trainer.callback_metrics["val/miou"]))  # no negatives: the mIoU


def test_val_negatives_enter_the_checkpoint_choice_as_a_harmonic_mean(tmp_path):
    manifest = write_tiny_dataset(tmp_path, spec=TinySpec(clips={"train": 4, "val": 6, "test": 2}), audio_tags=("mute",))
    cli = main(fit_args(tmp_path, tiny_config(tmp_path, manifest), "--trainer.max_epochs", "1",
                        "--data.val_negatives", "{mute: 0.5}", run="valneg"))
    m = cli.trainer.callback_metrics
    miou, empty, score = (float(m[k]) for k in ("val/miou", "val/negative_empty_rate", "val/score"))
    assert score == pytest.approx(2 * miou * empty / max(miou + empty, 1e-8), abs=1e-6)
    assert float(cli.trainer.checkpoint_callback.best_model_score) == pytest.approx(score)
    # the negative clips' (empty) ground truth is scored apart: val/miou is that of the clips with their own audio
    ds = cli.datamodule.split_dataset("val")
    clean = [u for i, u in enumerate(ds.uids) if ds.negative_of(i, 0) is None]
    assert 0 < len(clean) < len(ds.uids)


def test_nan_loss_stops_naming_uids_and_keeps_last_checkpoint(tmp_path):
    good = write_tiny_dataset(tmp_path / "good")
    bad_root = tmp_path / "bad"
    bad = write_tiny_dataset(bad_root, nan_audio_uids=("train002",))
    main(fit_args(tmp_path, tiny_config(tmp_path / "good", good, max_epochs=1), run="nan"))
    last = tmp_path / "runs/nan/checkpoints/last.ckpt"
    before = hashlib.sha256(last.read_bytes()).hexdigest()
    with pytest.raises(NonFiniteLossError, match=r"train002") as err:
        main(fit_args(tmp_path, tiny_config(bad_root, bad, max_epochs=3), "--data.batch_size", "1",
                      "--ckpt_path", "last", run="nan"))
    assert "last good checkpoint kept" in str(err.value) and str(last) in str(err.value)
    assert hashlib.sha256(last.read_bytes()).hexdigest() == before


def test_feature_dim_mismatch_is_a_clear_error(tiny):
    root, cfg = tiny
    with pytest.raises(FeatureCacheError, match=r"audio features are 6-d, the model is configured for audio_dim=7"):
        main(fit_args(root, cfg, "--data.audio_dim", "7", "--trainer.fast_dev_run", "true", run="dims"))


def test_cache_of_other_encoders_is_refused(tiny):
    root, cfg = tiny
    with pytest.raises(FeatureStoreError, match=r"expected 'mask2former'"):
        main(fit_args(root, cfg, "--data.expect_visual", "{encoder: mask2former}", "--trainer.fast_dev_run", "true",
                      run="enc"))


@pytest.mark.parametrize("bad", [["--model.net.init_args.bogus_width", "3"], ["--data.bogus", "1"]])
def test_unknown_config_key_is_a_parse_error(tiny, bad, capsys):
    root, cfg = tiny
    with pytest.raises(SystemExit) as exc:
        main(fit_args(root, cfg, *bad, "--trainer.fast_dev_run", "true", run="bad"))
    assert exc.value.code != 0
    assert "bogus" in capsys.readouterr().err
