"""CLIP embedding sets (metadata Parquet + img_emb/text_emb .npy): the same rows leave every object of a set.

Sets are written by np.save and pyarrow; outputs are checked with np.load (also
memory-mapped) and pyarrow against NumPy boolean indexing of the inputs.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from emb_helpers import check_output, expected_outputs, listed_of, make_set_files, npy_bytes, write_files
from helpers import write_list

import streamfilter


def run(inputs, tmp_path: Path, listed: set[str], **options) -> streamfilter.Report:
    blocklist = write_list(tmp_path / "list.txt", sorted(listed))
    return streamfilter.run(inputs, blocklist=[str(blocklist)], format="embeddings", quiet=True, **options)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("text", [True, False], ids=["with-text", "img-only"])
def test_local_sets_lose_the_same_rows_everywhere(tmp_path: Path, dtype: str, text: bool) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    sets = [make_set_files(i, rows=50 + i, dtype=dtype, text=text) for i in range(3)]
    for files in sets:
        write_files(src, files)
    listed = listed_of(sets, {0: [0, 7, 8, 49], 2: [13]})
    ids_file = tmp_path / "removed.npy"

    report = run(str(src), tmp_path, listed, output=str(out), removed_ids_out=str(ids_file))

    assert report.ok, [s.error for s in report.shards]
    assert [s.rows_removed for s in sorted(report.shards, key=lambda s: s.input)] == [4, 0, 1]
    by_input = {Path(s.input).name: s for s in report.shards}
    assert by_input["metadata_0001.parquet"].output_via == "byte_copy"
    assert by_input["metadata_0000.parquet"].output_via == "assembled"  # the kernel copies the kept ranges
    for files in sets:
        for rel, expected in expected_outputs(files, listed).items():
            data = (out / rel).read_bytes()
            check_output(rel, data, expected, out / rel)
            if rel.endswith(".npy"):
                assert data[:8] == files[rel][:8]  # magic and format version kept
    # Global positions, numbered as autofaiss numbers a folder: files in name order, then rows.
    assert np.load(ids_file).tolist() == [0, 7, 8, 49, 50 + 51 + 13]
    assert np.load(ids_file).dtype == np.int64
    # The layout mirrors the input's; nothing but the sets (and the run's ledger) is written.
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "_streamfilter" not in p.parts)
    assert written == sorted(rel for files in sets for rel in files)


def test_glob_of_metadata_names_the_sets_and_in_place_leaves_clean_sets_alone(tmp_path: Path) -> None:
    root = tmp_path / "laion"
    sets = [make_set_files(i, rows=30, width=1) for i in range(3)]
    for files in sets:
        write_files(root, files)
    listed = listed_of(sets, {1: [29]})
    expected = [expected_outputs(files, listed) for files in sets]
    clean_mtime = (root / "img_emb/img_emb_0.npy").stat().st_mtime_ns

    report = run(str(root / "metadata" / "metadata_*.parquet"), tmp_path, listed, in_place=True)

    assert report.ok, [s.error for s in report.shards]
    assert {s.output_via for s in report.shards} == {"unchanged", "assembled"}
    assert (root / "img_emb/img_emb_0.npy").stat().st_mtime_ns == clean_mtime
    for exp in expected:
        for rel, value in exp.items():
            check_output(rel, (root / rel).read_bytes(), value, root / rel)


SHM = Path("/dev/shm")


@pytest.mark.parametrize("where", ["same-file-system", "tmpfs-to-disk"])
def test_local_kept_ranges_are_copied_by_the_kernel_or_through_a_buffer(tmp_path: Path, where: str) -> None:
    """Within one file system the kernel copies every kept range (copy_file_range: their rows are not read
    into the process); from tmpfs to disk the kernel refuses (EXDEV) and every range goes through a
    buffer, short ones gathered into one write. The outputs are the same."""
    out = tmp_path / "out"
    if where == "same-file-system":
        root = tmp_path / "in"
    else:
        if not SHM.is_dir() or SHM.stat().st_dev == tmp_path.stat().st_dev:
            pytest.skip("needs /dev/shm on another file system than the test's folder")
        root = SHM / f"sf-test-{tmp_path.name}-{id(tmp_path)}"
    try:
        # Rows of 256 bytes. Set 0 keeps rows 2-499 (125 KiB) and 501-19,998 (4.8 MiB, a long range);
        # set 1 loses every 7th row (short ranges only).
        sets = [make_set_files(0, rows=20000, dim=64, dtype="float32"),
                make_set_files(1, rows=2000, dim=64, dtype="float32")]  # fmt: skip
        for files in sets:
            write_files(root, files)
        listed = listed_of(sets, {0: [0, 1, 500, 19999], 1: list(range(0, 2000, 7))})
        report = run(str(root), tmp_path, listed, output=str(out))
        assert report.ok, [s.error for s in report.shards]
        assert {s.output_via for s in report.shards} == {"assembled"}
        kept_vectors = 0
        for files in sets:
            for rel, expected in expected_outputs(files, listed).items():
                check_output(rel, (out / rel).read_bytes(), expected, out / rel)
                kept_vectors += expected.nbytes if isinstance(expected, np.ndarray) else 0
        read = report.totals["bytes_read"]
        assert read < kept_vectors / 2 if where == "same-file-system" else read >= kept_vectors
    finally:
        if root.is_relative_to(SHM):
            import shutil

            shutil.rmtree(root, ignore_errors=True)


def test_dry_run_counts_without_writing(tmp_path: Path) -> None:
    root = tmp_path / "in"
    sets = [make_set_files(i, rows=20) for i in range(2)]
    for files in sets:
        write_files(root, files)
    report = run(str(root), tmp_path, listed_of(sets, {0: [1, 2]}), dry_run=True)
    assert report.ok and report.totals["rows_removed"] == 2


def test_allow_mode_keeps_only_listed_rows(tmp_path: Path) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    files = make_set_files(0, rows=40)
    write_files(root, files)
    listed = listed_of([files], {0: [3, 4, 30]})
    report = run(str(root), tmp_path, listed, output=str(out), mode="allow")
    assert report.ok
    array = np.load(out / "img_emb/img_emb_0000.npy")
    np.testing.assert_array_equal(array, np.load(io.BytesIO(files["img_emb/img_emb_0000.npy"]))[[3, 4, 30]])


def _fortran(files: dict[str, bytes]) -> dict[str, bytes]:
    array = np.load(io.BytesIO(files["img_emb/img_emb_0001.npy"]))
    return {**files, "img_emb/img_emb_0001.npy": npy_bytes(np.asfortranarray(array))}


def _object_dtype(files: dict[str, bytes]) -> dict[str, bytes]:
    buffer = io.BytesIO()
    np.save(buffer, np.array([[object()]] * 30, dtype=object), allow_pickle=True)
    return {**files, "img_emb/img_emb_0001.npy": buffer.getvalue()}


def _structured(files: dict[str, bytes]) -> dict[str, bytes]:
    array = np.zeros((30, 2), dtype=[("a", "<f4"), ("b", "<i4")])
    return {**files, "img_emb/img_emb_0001.npy": npy_bytes(array)}


def _huge_header(files: dict[str, bytes]) -> dict[str, bytes]:
    data = files["img_emb/img_emb_0001.npy"]
    # Format 2.0 takes a 4-byte header length: one far beyond what NumPy reads safely.
    return {**files, "img_emb/img_emb_0001.npy": b"\x93NUMPY\x02\x00" + (1 << 30).to_bytes(4, "little") + data[10:]}


def _truncated(files: dict[str, bytes]) -> dict[str, bytes]:
    return {**files, "img_emb/img_emb_0001.npy": files["img_emb/img_emb_0001.npy"][:-5]}


def _fewer_rows(files: dict[str, bytes]) -> dict[str, bytes]:
    array = np.load(io.BytesIO(files["text_emb/text_emb_0001.npy"]))
    return {**files, "text_emb/text_emb_0001.npy": npy_bytes(array[:-1])}


def _missing(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k != "text_emb/text_emb_0001.npy"}


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_fortran, "Fortran order"),
        (_object_dtype, "object or structured dtype"),
        (_structured, "object or structured dtype"),
        (_huge_header, "header claims"),
        (_truncated, "is truncated"),
        (_fewer_rows, "has 29 rows, its metadata"),
        (_missing, "is missing"),
    ],
)
def test_bad_set_fails_alone_with_one_line_and_writes_nothing(
    tmp_path: Path, damage, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    sets = [make_set_files(i, rows=30) for i in range(3)]
    sets[1] = damage(sets[1])
    for files in sets:
        write_files(root, files)
    listed = listed_of(sets, {0: [1], 1: [2], 2: [3]})
    import numpy.lib.format as npformat

    def never_unpickle(*args, **kwargs):
        raise AssertionError("np.load with pickles")

    monkeypatch.setattr(npformat, "read_array", never_unpickle)

    report = run(str(root), tmp_path, listed, output=str(out))
    monkeypatch.undo()

    failed = [s for s in report.shards if s.status == "failed"]
    assert [Path(s.input).name for s in failed] == ["metadata_0001.parquet"]
    error = failed[0].error
    assert says in error and "\n" not in error
    assert not any(p.name.endswith("_0001.npy") or p.name == "metadata_0001.parquet" for p in out.rglob("*"))
    for index in (0, 2):
        for rel, value in expected_outputs(sets[index], listed).items():
            check_output(rel, (out / rel).read_bytes(), value)


def test_removed_ids_refused_when_a_set_failed(tmp_path: Path) -> None:
    root = tmp_path / "in"
    sets = [make_set_files(i, rows=30) for i in range(2)]
    sets[0] = _truncated({**sets[0], "img_emb/img_emb_0001.npy": sets[0]["img_emb/img_emb_0000.npy"]})
    sets[0] = {k.replace("_0001.npy", "_0000.npy"): v for k, v in sets[0].items()}
    for files in sets:
        write_files(root, files)
    with pytest.raises(streamfilter.StreamfilterError, match="removed-ids-out not written"):
        run(str(root), tmp_path, listed_of(sets, {1: [0]}), output=str(tmp_path / "out"),
            removed_ids_out=str(tmp_path / "ids.npy"))  # fmt: skip
    assert not (tmp_path / "ids.npy").exists()


def test_auto_format_refuses_a_folder_of_embedding_sets(tmp_path: Path) -> None:
    root = tmp_path / "in"
    write_files(root, make_set_files(0, rows=5))
    with pytest.raises(streamfilter.UsageError, match="--format embeddings"):
        streamfilter.run(str(root), blocklist=[str(write_list(tmp_path / "l.txt", ["x"]))], output=str(tmp_path / "o"),
                         quiet=True)  # fmt: skip


def test_report_json_has_no_positions(tmp_path: Path) -> None:
    root = tmp_path / "in"
    sets = [make_set_files(0, rows=10)]
    write_files(root, sets[0])
    report = run(str(root), tmp_path, listed_of(sets, {0: [1]}), output=str(tmp_path / "out"))
    assert "removed_positions" not in json.dumps(report.to_dict())


def test_verify_rechecks_the_vectors_beside_each_metadata(tmp_path: Path, capsys) -> None:
    from streamfilter import cli

    root, out = tmp_path / "in", tmp_path / "out"
    sets = [make_set_files(i, rows=30) for i in range(3)]
    for files in sets:
        write_files(root, files)
    listed = listed_of(sets, {0: [1], 2: [5, 6]})
    assert run(str(root), tmp_path, listed, output=str(out)).ok
    blocklist = str(tmp_path / "list.txt")
    capsys.readouterr()
    assert cli.main(["verify", str(out), "--blocklist", blocklist]) == 0
    assert "verified 3 outputs, 87 rows: 3 clean, 0 failed" in capsys.readouterr().out

    # A .npy cut short, and one with a row fewer than its metadata (written whole by np.save), both fail.
    truncated = out / "img_emb/img_emb_0000.npy"
    truncated.write_bytes(truncated.read_bytes()[:-7])
    shorter = out / "text_emb/text_emb_0002.npy"
    shorter.write_bytes(npy_bytes(np.load(shorter)[:-1]))
    assert cli.main(["verify", str(out), "--blocklist", blocklist]) == 1
    captured = capsys.readouterr()
    assert "1 clean, 2 failed" in captured.out
    err = captured.err.splitlines()
    assert len(err) == 2
    assert any("metadata_0000.parquet" in line and "is truncated" in line for line in err)
    assert any("metadata_0002.parquet" in line and "has 27 rows, its metadata 28" in line for line in err)
