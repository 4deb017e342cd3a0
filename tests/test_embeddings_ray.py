"""``--removed-ids-out`` with the Ray executor: the positions travel back from the Ray tasks with each
set's report and are numbered as on the local executor (files in name order, then rows)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from emb_helpers import check_output, expected_outputs, keep_mask, listed_of, make_set_files, metadata_of, write_files
from helpers import write_list

import streamfilter

ray = pytest.importorskip("ray")


def test_removed_ids_from_ray_tasks(tmp_path: Path) -> None:
    root = tmp_path / "in"
    sets = [make_set_files(i, rows=40 + 5 * i) for i in range(3)]
    for files in sets:
        write_files(root, files)
    listed = listed_of(sets, {0: [0, 39], 2: [10, 11, 49]})
    # The reference: each set's removed rows by NumPy, offset by the rows of the sets before it.
    offsets = np.cumsum([0] + [metadata_of(f).num_rows for f in sets[:-1]])
    expected_ids = np.concatenate(
        [np.flatnonzero(~keep_mask(metadata_of(f), listed)) + off for f, off in zip(sets, offsets, strict=True)]
    )
    assert expected_ids.tolist() == [0, 39, 40 + 45 + 10, 40 + 45 + 11, 40 + 45 + 49]
    ids = tmp_path / "removed_ids.npy"

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        report = streamfilter.run(
            str(root), blocklist=[str(write_list(tmp_path / "list.txt", sorted(listed)))], format="embeddings",
            output=str(tmp_path / "out"), removed_ids_out=str(ids), executor="ray", quiet=True,
        )  # fmt: skip
    finally:
        ray.shutdown()

    assert report.ok, [s.error for s in report.shards]
    saved = np.load(ids, allow_pickle=False)
    assert saved.dtype == np.int64 and saved.tolist() == expected_ids.tolist()
    for files in sets:
        for rel, expected in expected_outputs(files, listed).items():
            check_output(rel, (tmp_path / "out" / rel).read_bytes(), expected)
