"""``make study``: every variant trained on every seed over the cached features, then the preference
test per slice with the cue controls; writes ``reports/study/{study.json,study.md,study.png}``.

One job per (variant, seed) runs in its own process (``python -m train.study --one``), ``jobs`` at
a time, one torch thread each (the demo experiment's ``torch_threads: 1``): on the 2-core box two
side by side. A job trains ``runs/study/<variant>-s<seed>`` with ``--seed_everything s --data.seed s``
(the demo's configs, caches and cues), then writes its rows (:mod:`train.study_eval`) to
``rows.json`` in its run directory, with the on-screen swap probe of the validation split
(:func:`train.study_eval.onscreen_probe`; null without visible-object maps). A finished job whose
inputs (its fit arguments and the cache pointers) are unchanged is reused; a failed job is reported
and the others go on.

A variant is a model config name (``configs/model/<name>.yaml``), optionally with a cue set:
``teso:active`` trains TeSO on the ``active`` cue set (the ceiling of perfect cues). Cue controls
apply to variants that read cues (all but ``audio_only``). Nothing is chosen on the test split:
each run keeps its best-validation checkpoint; the test split is only scored.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from pipeline.runner import pointer_name
from train.controls import CONTROLS

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIGS = ("configs/trainer/cpu.yaml", "configs/data/synthavs.yaml", "configs/model/{model}.yaml",
                "configs/experiment/demo.yaml")
NO_CUES = ("audio_only",)  # variants that never read cues: only the control "none"
ROWS, STAMP = "rows.json", "study_stamp.json"
PROBE = "onscreen_probe"  # rows.json key: the on-screen swap probe on the validation split (or null)


class StudyError(ValueError):
    """Bad study input (unknown variant, no seeds); the message names it."""


def parse_variant(spec: str) -> tuple[str, str | None]:
    """``teso`` -> (``teso``, None); ``teso:active`` -> (``teso``, ``active``)."""
    model, _, cues = spec.partition(":")
    return model, (cues or None)


def run_name(variant: str, seed: int) -> str:
    return f"{variant.replace(':', '-')}-s{seed}"


def controls_for(variant: str, controls: Sequence[str] = CONTROLS) -> list[str]:
    return ["none"] if parse_variant(variant)[0] in NO_CUES else list(controls)


def fit_args(variant: str, seed: int, *, configs: Sequence[str], runs_dir: Path, cache_root: str | None,
             train_args: Sequence[str] = (), cues: str | None = None) -> list[str]:
    """The ``python -m train fit`` arguments of one study run (``cues``: the cue set of variants without one)."""
    model, own = parse_variant(variant)
    cues = own or cues
    args = ["fit"]
    for c in configs:
        path = Path(c.format(model=model))
        args += ["--config", str(path if path.is_absolute() else ROOT / path)]
    if cache_root is not None:
        args += ["--data.cache_root", str(cache_root)]
    if cues:
        args += ["--data.cues_tag", cues]
    return args + ["--variant", variant, "--runs_dir", str(runs_dir), "--run_name", run_name(variant, seed),
                   "--seed_everything", str(seed), "--data.seed", str(seed), "--trainer.enable_progress_bar", "false",
                   "--ckpt_path", "last", *train_args]


def cue_tag_of(args: Sequence[str]) -> str:
    """The cue set a run with these fit arguments reads: the last ``data.cues_tag`` of its config
    files and ``--data.cues_tag`` arguments, in order (as the CLI applies them), else the data
    module's default."""
    import inspect

    import yaml

    from train.data import AVSDataModule

    tag = inspect.signature(AVSDataModule.__init__).parameters["cues_tag"].default
    for flag, value in zip(args, args[1:]):
        if flag == "--data.cues_tag":
            tag = value
        elif flag == "--config" and Path(value).exists():
            data = (yaml.safe_load(Path(value).read_text()) or {}).get("data") or {}
            tag = data.get("cues_tag", tag)
    return tag


def inputs_stamp(args: Sequence[str], cache_root: str | None) -> str:
    """Hash of the fit arguments, the config files they name and the cache pointers the run reads:
    a rerun reuses a finished job only when none of them changed. Of the cue-set pointers
    (``cues/latest-<set>.json``, ``text/latest-<set>.json``) only the run's own set counts, so making
    another cue set (say ``teso:cot15``'s) does not retrain the finished runs."""
    h = hashlib.sha256(json.dumps(list(args)).encode())
    for a in args:
        if a.endswith(".yaml") and Path(a).exists():
            h.update(Path(a).read_bytes())
    root = Path(cache_root) if cache_root else None
    own = pointer_name(cue_tag_of(args))
    for p in sorted(root.glob("*/*/latest*.json")) if root and root.exists() else []:
        if p.parent.name in ("cues", "text") and p.name != own:
            continue
        h.update(str(p).encode() + p.read_bytes())
    return h.hexdigest()[:16]


def one_job(variant: str, seed: int, *, configs: Sequence[str], runs_dir: Path, cache_root: str | None,
            train_args: Sequence[str] = (), controls: Sequence[str] = CONTROLS, cues: str | None = None,
            split: str = "test") -> Path:
    """Train (unless reusable) and evaluate one (variant, seed) on ``split``; returns its ``rows.json``."""
    from train.cli import main as fit_main
    from train.study_coverage import FRAME_IOU
    from train.study_eval import evaluate_run, onscreen_probe, parameter_count

    args = fit_args(variant, seed, configs=configs, runs_dir=runs_dir, cache_root=cache_root, train_args=train_args,
                    cues=cues)
    run = Path(runs_dir) / run_name(variant, seed)
    stamp = inputs_stamp(args, cache_root)
    stamp_file = run / STAMP
    same = stamp_file.exists() and json.loads(stamp_file.read_text())["stamp"] == stamp
    done = json.loads((run / ROWS).read_text()) if same and (run / ROWS).exists() else None
    if done is not None and done.get("split", "test") == split and FRAME_IOU in done:
        if PROBE not in done:  # scored before the probe was part of the study
            done[PROBE] = onscreen_probe(run / "export", cache_root=cache_root)
            (run / ROWS).write_text(json.dumps(done, default=float))
        return run / ROWS
    if run.exists() and not same:
        shutil.rmtree(run)  # other inputs: start over (a same-input run resumes from its last checkpoint)
    run.mkdir(parents=True, exist_ok=True)
    stamp_file.write_text(json.dumps({"stamp": stamp, "args": args}))
    t0 = time.perf_counter()
    rescore = same and (run / "export" / "config.yaml").exists()  # exported = trained: another split only rescores
    if rescore:
        before = done or {}  # the rows.json read above (same inputs): its training figures carry over
        train_s, trained_at = before.get("train_seconds", float("nan")), before.get("trained_at", 0.0)
    else:
        fit_main(args)
        train_s, trained_at = time.perf_counter() - t0, time.time()
    scores = evaluate_run(run / "export", variant=variant, seed=seed, controls=controls_for(variant, controls),
                          cache_root=cache_root, split=split)
    (run / ROWS).write_text(json.dumps({"rows": scores.rows, FRAME_IOU: scores.frame_iou, "data": scores.data,
                                        "split": split, "train_seconds": train_s,
                                        "eval_seconds": time.perf_counter() - t0 - (0 if rescore else train_s),
                                        "parameters": parameter_count(run / "export"), "trained_at": trained_at,
                                        PROBE: onscreen_probe(run / "export", cache_root=cache_root)}, default=float))
    return run / ROWS


def job_argv(variant: str, seed: int, *, runs_dir: Path, configs: Sequence[str], controls: Sequence[str],
             cache_root: str | None, train_args: Sequence[str], cues: str | None, split: str) -> list[str]:
    """The child process's arguments for one job (``main`` parses them back).

    ``--train-args=...`` is one token: a value such as ``--data.train_negatives={"mute":0.1}`` starts with
    ``--`` and has no space, so as a separate token argparse would take it for an option.
    """
    return ["--one", variant, "--seed", str(seed), "--runs-dir", str(runs_dir),
            "--configs", ",".join(configs), "--controls", ",".join(controls), "--split", split,
            *(["--cache-root", str(cache_root)] if cache_root is not None else []),
            *(["--cues", cues] if cues else []),
            *([f"--train-args={' '.join(train_args)}"] if train_args else [])]


def _run_jobs(todo: list[tuple[str, int]], running: list, failed: list[dict[str, Any]], *, runs_dir: Path,
              configs: Sequence[str], controls: Sequence[str], cache_root: str | None, train_args: Sequence[str],
              jobs: int, env: dict[str, str], t0: float, progress: bool, cues: str | None, split: str) -> None:
    """Start each job as a child process, ``jobs`` at a time; record failures (the others go on)."""
    while todo or running:
        while todo and len(running) < max(1, jobs):
            v, s = todo.pop(0)
            log = runs_dir / f"{run_name(v, s)}.log"
            cmd = [sys.executable, "-m", "train.study", *job_argv(v, s, runs_dir=runs_dir, configs=configs,
                                                                  controls=controls, cache_root=cache_root,
                                                                  train_args=train_args, cues=cues, split=split)]
            with open(log, "w") as fh:
                running.append((v, s, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT), log))
            if progress:
                print(f"[study] started {run_name(v, s)} (log {log})", file=sys.stderr)
        time.sleep(0.5)
        for item in list(running):
            v, s, proc, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(empty log)"]
                failed.append({"variant": v, "seed": s, "log": str(log), "last_line": tail[0]})
            if progress:
                print(f"[study] {'FAILED' if proc.returncode else 'done'} {run_name(v, s)} "
                      f"({time.perf_counter() - t0:.0f} s since start)", file=sys.stderr)


def run_study(*, variants: Sequence[str], seeds: int, configs: Sequence[str] = DEMO_CONFIGS,
              cache_root: str | None = "cache", runs_dir: str | Path = "runs/study", out_dir: str | Path = "reports/study",
              jobs: int = 2, train_args: Sequence[str] = (), controls: Sequence[str] = CONTROLS,
              cues: str | None = None, progress: bool = True, split: str = "test") -> dict[str, Any]:
    """Run every (variant, seed) job, ``jobs`` at a time, and write the study report of ``split`` (``val``
    to choose settings, ``test`` for the final scoring); returns its JSON."""
    from train.study_coverage import coverage_for
    from train.study_report import write_study

    if not variants or seeds < 1:
        raise StudyError(f"the study needs variants and seeds >= 1 (got variants {list(variants)}, seeds {seeds})")
    for v in variants:
        model = parse_variant(v)[0]
        if not any(Path(c.format(model=model)).is_absolute() and Path(c.format(model=model)).exists()
                   or (ROOT / c.format(model=model)).exists() for c in configs if "{model}" in c):
            raise StudyError(f"variant {v!r}: no configs/model/{model}.yaml; use a model config name")
    runs_dir = Path(runs_dir).resolve()  # the jobs run in the repository root
    runs_dir.mkdir(parents=True, exist_ok=True)
    cache_root = str(Path(cache_root).resolve()) if cache_root is not None else None
    todo = [(v, s) for s in range(seeds) for v in variants]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0, started = time.perf_counter(), time.time()
    running: list[tuple[str, int, subprocess.Popen, Path]] = []
    failed: list[dict[str, Any]] = []
    try:
        _run_jobs(todo, running, failed, runs_dir=runs_dir, configs=configs, controls=controls, cache_root=cache_root,
                  train_args=train_args, jobs=jobs, env=env, t0=t0, progress=progress, cues=cues, split=split)
    finally:  # interrupted (Ctrl-C): no job outlives the study
        for _, _, proc, _ in running:
            proc.kill()
    results = []
    for v in variants:
        for s in range(seeds):
            f = runs_dir / run_name(v, s) / ROWS
            if f.exists() and not any(x["variant"] == v and x["seed"] == s for x in failed):
                results.append(json.loads(f.read_text()))
    meta = {"variants": list(variants), "seeds": seeds, "jobs": jobs, "configs": list(configs), "cues": cues or "config",
            "train_args": list(train_args), "wall_seconds": time.perf_counter() - t0, "failed": failed,
            "runs_dir": str(runs_dir), "split": split,
            # jobs trained before this study started (same inputs; reused or only rescored): the wall
            # time then measures less than the whole study
            "reused": sum(1 for r in results if r.get("trained_at", 0) < started),
            "load_average_15min": round(os.getloadavg()[2], 1)}  # how busy the machine was, for the wall time
    meta["coverage"], meta["coverage_notes"] = coverage_for(
        results, text_variants=[v for v in variants if parse_variant(v)[0] not in NO_CUES])
    return write_study(results, Path(out_dir), meta)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Multi-seed study: train variants x seeds, preference test with controls.")
    ap.add_argument("--variants", default="teso audio_only", help="space/comma list; NAME or NAME:CUESET")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    ap.add_argument("--jobs", type=int, default=2, help="jobs side by side (one thread each)")
    ap.add_argument("--cache-root", default=None, help="feature caches (default: the configs' cache_root)")
    ap.add_argument("--runs-dir", default="runs/study")
    ap.add_argument("--out", default="reports/study")
    ap.add_argument("--configs", default=",".join(DEMO_CONFIGS), help="comma list; {model} = the variant's model")
    ap.add_argument("--controls", default=",".join(CONTROLS))
    ap.add_argument("--cues", default=None, help="cue set of variants without their own (default: the data config's)")
    ap.add_argument("--split", default="test", choices=("val", "test"),
                    help="split scored: val to choose settings, test (default) for the final scoring")
    ap.add_argument("--train-args", default="",
                    help="extra fit arguments, e.g. --train-args='--trainer.max_epochs 1' (with '=': a value "
                         "that starts with -- and has no space would be taken for an option)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a job's child process
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--no-progress", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    configs = [c for c in a.configs.split(",") if c]
    controls = [c for c in a.controls.split(",") if c]
    train_args = a.train_args.split()
    if a.one:
        one_job(a.one, a.seed, configs=configs, runs_dir=Path(a.runs_dir), cache_root=a.cache_root,
                train_args=train_args, controls=controls, cues=a.cues, split=a.split)
        return 0
    bad = [c for c in controls if c not in CONTROLS]
    if bad:
        print(f"error: --controls {bad}: use {list(CONTROLS)}", file=sys.stderr)
        return 2
    try:
        out = run_study(variants=[v for v in a.variants.replace(",", " ").split() if v], seeds=a.seeds, configs=configs,
                        cache_root=a.cache_root, runs_dir=a.runs_dir, out_dir=a.out, jobs=a.jobs, train_args=train_args,
                        controls=controls, cues=a.cues, progress=not a.no_progress, split=a.split)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}/study.json, study.md, study.png ({out['meta']['wall_seconds'] / 60:.1f} min)")
    print(Path(a.out, "study.md").read_text().split("## Per seed")[0])
    return 1 if out["meta"]["failed"] else 0


if __name__ == "__main__":
    from pipeline.errors import run_cli

    sys.exit(run_cli(main))
