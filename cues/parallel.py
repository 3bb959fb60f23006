"""Asking an LLM cue source's missing captions in several local processes (``--ask-jobs``).

On a CPU, ``jobs`` processes with one thread each, each asking its share of the captions, finish
before one process with ``jobs`` threads: a decode step's skinny matrix products use a second
thread poorly (measured on the 2-core box: the demo's 160 ``cot-v3`` captions with
Qwen2.5-Coder-0.5B took 185 s in one two-thread process and 156 s in two one-thread processes,
with the same 160 answers; docs/cues.md, Speed). The shares are disjoint (every ``jobs``-th of
the sorted memo keys of the missing captions), every process memoises its answers as each LLM
call returns, and the stage then reads them all from the memo. On Linux the other processes are
forked after the model is loaded and share its memory; elsewhere each loads its own copy.
"""
from __future__ import annotations

import multiprocessing
import sys
from typing import Any

MIN_PER_JOB = 16  # missing captions per extra process, at least: starting one (imports, model load) costs ~10 s


def jobs_for(n_missing: int, jobs: int) -> int:
    """Processes worth starting for ``n_missing`` captions (1 = ask in this process alone).

    >>> jobs_for(160, 2), jobs_for(20, 2), jobs_for(0, 4), jobs_for(40, 4)
    (2, 1, 1, 2)
    """
    return max(1, min(jobs, n_missing // MIN_PER_JOB))


def _worker(source: Any, captions: list[str], threads: int, chunk: int) -> None:
    import torch

    torch.set_num_threads(threads)
    source.ask_ahead(captions, chunk=chunk)


def ask_in_processes(source: Any, captions: list[str], *, jobs: int, chunk: int, progress: bool = False) -> int:
    """Ask every caption of ``captions`` that the memo lacks, in up to ``jobs`` processes (this one
    included); returns how many were asked. ``source`` is a :class:`cues.sources.LLMCues`.

    This process asks share 0, the others one share each (forked on Linux; spawned elsewhere,
    with the source pickled without its loaded model, which each loads at its first question).
    A process that fails leaves its captions unanswered: this process asks them afterwards, so a
    failure costs time, not answers. The source's ``asked`` counter ends up counting every
    process's questions.
    """
    todo = source.missing(captions)
    jobs = jobs_for(len(todo), jobs)
    if jobs == 1:
        return source.ask_ahead(captions, chunk=chunk, progress=progress)
    import torch

    # The shares are fixed here: a process that recomputed "what is missing" after another had
    # answered its own share would split a smaller set differently.
    keys = sorted(todo)
    shares = [[todo[k] for k in keys[part::jobs]] for part in range(jobs)]
    before, threads = source.asked, max(1, torch.get_num_threads() // jobs)
    # Linux: forked after this process loaded the model, the others share its memory pages and
    # start at once (one torch thread each, as PyTorch's DataLoader workers: no OpenMP region
    # runs in them). Elsewhere they are spawned and load their own copy first.
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    if ctx.get_start_method() == "fork":
        source.warm()  # the grammar too: compiled once here with every thread, not once per process
    procs = [ctx.Process(target=_worker, args=(source, share, threads, chunk), daemon=True) for share in shares[1:]]
    for p in procs:
        p.start()
    own_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        source.ask_ahead(shares[0], chunk=chunk, progress=progress,
                         note=f" (this process's share: {jobs} processes ask {len(todo)})")
        for p in procs:
            p.join()
    finally:
        torch.set_num_threads(own_threads)
        for p in procs:
            if p.is_alive():
                p.terminate()
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    if failed:
        print(f"[cues] {len(failed)} of {jobs - 1} asking processes failed (exit codes {failed}); "
              "their captions are asked here", file=sys.stderr)
    source.ask_ahead(captions, chunk=chunk, progress=progress)  # what a failed process left (else nothing)
    source.asked = before + len(todo)  # every process's questions: each missing caption was asked once
    return len(todo)
