"""Fault injection for the tests/test_faults_*.py suite: a stage killed at a chosen point, snapshots.

``python -m tests.dummies_faults POINT SHARD -- ARGV...`` runs ``python -m pipeline.features ARGV``
and SIGKILLs itself at POINT of shard SHARD (nothing in the library knows about it: the writes are
wrapped from outside):

* ``before_arrays``: as the shard's first array file is about to be written;
* ``before_commit``: arrays and rows written, the commit record not;
* ``after_commit``: right after the shard's commit record;
* ``before_card``: every shard committed, the card and ``.completed`` not written.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

from manifests.schema import read_manifest

POINTS = ("before_arrays", "before_commit", "after_commit", "before_card")


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), without the ``damaged/`` folders."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "damaged" not in p.relative_to(root).parts}


def private_copy(manifest, dest: Path):
    """The manifest over a private copy of its media (a test may break files in it)."""
    shutil.copytree(manifest.data_root, dest, symlinks=True)
    return read_manifest(manifest.path, data_root=dest)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, shard: int) -> None:
    from pipeline import runner, shards

    if point == "before_arrays":
        real_npy = shards.write_npy

        def write_npy(arr, path):
            if path.name.startswith(f"shard-{shard:05d}."):
                _die()
            real_npy(arr, path)

        shards.write_npy = write_npy
    elif point == "before_commit":
        real_json = shards.write_json

        def write_json(obj, path):
            if path.name == shards.commit_name(shard):
                _die()
            real_json(obj, path)

        shards.write_json = write_json
    elif point == "after_commit":
        real_shard = runner.write_shard

        def write_shard(out, k, rows, arrays):
            real_shard(out, k, rows, arrays)
            if k == shard:
                _die()

        runner.write_shard = write_shard
    elif point == "before_card":
        real_card = runner.write_json

        def write_card(obj, path):
            if path.name == runner.CARD:
                _die()
            real_card(obj, path)

        runner.write_json = write_card
    else:
        raise SystemExit(f"unknown point {point!r}; choose from {POINTS}")


if __name__ == "__main__":
    point, shard, sep, *argv = sys.argv[1:]
    assert sep == "--"
    install(point, int(shard))
    from pipeline.features import main

    main(argv)
