"""Samples removed by their image's PDQ hash (``--image-hash pdq``): the index, tars, img2dataset sets.

References are independent of the code under test: list hashes come from the ``pdqhash``
package on images Pillow decodes whole; nearest distances from a brute-force numpy
popcount over the whole list; expected tars from Python's tarfile (wds_helpers), expected
Parquet from pyarrow.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import read_parquet, s3_get
from pdq_helpers import encode, make_tar, natural, reference_hash, write_hex_list
from wds_helpers import assert_same_entries, entries, reference_tar, sample_key

from streamfilter import cli
from streamfilter.errors import UsageError
from streamfilter.sets.perceptual import PdqKeySet, parse_hex

Image = pytest.importorskip("PIL.Image")
pdqhash = pytest.importorskip("pdqhash")

FIXTURE = Path(__file__).parent / "fixtures" / "img2dataset"


# -- images as a derivative holds them -------------------------------------------------------------------


def variants(image: Image.Image) -> dict[str, bytes]:
    """What a derivative's copy of an image may be: resized, re-encoded at another quality, slightly cropped."""
    w, h = image.size
    return {
        "smaller": encode(image.resize((w * 3 // 4, h * 3 // 4), Image.BICUBIC), quality=85),
        "quality 40": encode(image, quality=40),
        "cropped 1%": encode(image.crop((w // 100, h // 100, w - w // 100, h - h // 100)), quality=90),
    }


def run(argv: list[str], report: Path) -> tuple[int, dict]:
    code = cli.main([*argv, "--report", str(report)])
    return code, json.loads(report.read_text())


def image_job(tmp_path: Path, images: dict[str, bytes], hashes: list[bytes], *extra: str) -> tuple[Path, list[str]]:
    """``in/00000.tar`` of ``images``, a list of ``hashes``, and the run of one against the other into ``out/``."""
    (tmp_path / "in").mkdir()
    src = make_tar(tmp_path / "in" / "00000.tar", images)
    listed = write_hex_list(tmp_path / "pdq.txt", hashes)
    return src, ["run", str(src), "--output", str(tmp_path / "out"), "--image-hash", "pdq", "--blocklist",
                 str(listed), *extra]  # fmt: skip


# -- the index -----------------------------------------------------------------------------------------


def brute_force(listed: np.ndarray, queries: np.ndarray) -> np.ndarray:
    xor = np.bitwise_xor(queries[:, None, :], listed[None, :, :])
    return np.unpackbits(xor, axis=-1).sum(axis=-1, dtype=np.int64).min(axis=1)


@pytest.mark.parametrize("max_distance", [0, 31, 40])
def test_index_finds_every_hash_within_the_distance_and_nothing_further(max_distance: int) -> None:
    rng = np.random.default_rng(max_distance)
    listed = rng.integers(0, 256, (3000, 32), dtype=np.uint8)
    queries = rng.integers(0, 256, (600, 32), dtype=np.uint8)
    for i in range(0, 600, 2):  # half of them near a listed hash, at every distance up to past the limit
        bits = np.unpackbits(listed[rng.integers(0, 3000)])
        bits[rng.choice(256, i % (max_distance + 8), replace=False)] ^= 1
        queries[i] = np.packbits(bits)
    queries[1] = listed[5]

    found = PdqKeySet(listed, max_distance).distances(queries)

    nearest = brute_force(listed, queries)
    expected = np.where(nearest <= max_distance, nearest, -1)
    np.testing.assert_array_equal(found, expected)
    assert (found >= 0).sum() > 600 // 2 * (max_distance + 1) // (max_distance + 8) - 5  # the test tests something


def test_index_contains_takes_arrow_binaries_and_nulls_never_match() -> None:
    listed = np.random.default_rng(1).integers(0, 256, (50, 32), dtype=np.uint8)
    keys = pa.array([listed[3].tobytes(), None, bytes(32)], pa.binary(32))
    assert PdqKeySet(listed).contains(keys).to_pylist() == [True, False, False]


def test_list_parsing_is_the_reference_hex_and_refuses_a_bad_line() -> None:
    raw = [bytes(range(32)), bytes(range(100, 132))]
    hexes = pa.array([raw[0].hex(), raw[1].hex().upper()])
    assert [bytes(r) for r in parse_hex(hexes, str)] == raw
    with pytest.raises(UsageError, match="line 3: not a PDQ hash"):
        parse_hex(pa.array([raw[0].hex(), raw[1].hex(), "f" * 63]), lambda i: f"line {i + 1}")
    with pytest.raises(UsageError, match="--max-distance 64"):
        PdqKeySet(np.zeros((1, 32), np.uint8), 64)


# -- WebDataset tars ---------------------------------------------------------------------------------


@pytest.fixture
def photos() -> dict[int, Image.Image]:
    return {seed: natural(seed) for seed in range(24)}


def test_variants_of_listed_images_go_and_unrelated_images_stay(photos, tmp_path: Path) -> None:
    """Each listed image appears in the shard only as a variant (resized, re-encoded, cropped); the list
    holds the originals' hashes. Other images, PNG and WebP among them, stay."""
    listed_seeds = [2, 7, 11]
    images: dict[str, bytes] = {}
    expected_gone = set()
    for seed, image in photos.items():
        if seed in listed_seeds:
            for i, (_, data) in enumerate(variants(image).items()):
                images[f"{seed:03d}_{i}.jpg"] = data
                expected_gone.add(f"{seed:03d}_{i}")
        else:
            fmt, ext = [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")][seed % 3]
            images[f"{seed:03d}.{ext}"] = encode(image, fmt)
    src, argv = image_job(tmp_path, images, [reference_hash(encode(photos[s], quality=95)) for s in listed_seeds])
    listed = tmp_path / "pdq.txt"

    code, report = run(argv, tmp_path / "report.json")

    assert code == 0, report["shards"][0]["error"]
    out = (tmp_path / "out" / "00000.tar").read_bytes()
    kept, expected = reference_tar(src, lambda sample: sample_key(sample[0].name) in expected_gone)
    assert_same_entries(entries(out), kept)
    assert out == expected
    shard = report["shards"][0]
    assert (shard["rows_in"], shard["rows_out"]) == (len(images), len(images) - len(expected_gone))
    images_seen = shard["images"]
    assert (images_seen["hashed"], images_seen["matched"], images_seen["undecodable"]) == (len(images), 9, 0)
    assert sum(images_seen["distances"].values()) == 9
    assert all(0 <= int(d) <= 31 for d in images_seen["distances"])
    assert report["totals"]["images"]["matched"] == 9
    verify = ["verify", str(tmp_path / "out"), "--image-hash", "pdq", "--blocklist", str(listed)]
    assert cli.main(verify) == 0  # the outputs hashed again: no image within the distance remains
    code, rerun = run(argv, tmp_path / "rerun.json")  # resumed from its receipt: the same image counts
    assert code == 0 and rerun["shards"][0]["resumed"]
    assert rerun["shards"][0]["images"] == images_seen and rerun["totals"]["images"] == report["totals"]["images"]
    assert report["set_size"] == 3
    text = (tmp_path / "report.json").read_text()
    assert not any(line in text for line in listed.read_text().split()[3:])  # never the hashes


def test_a_shard_without_matches_is_copied_and_flips_do_not_match(photos, tmp_path: Path) -> None:
    """Flips are not matched (see streamfilter/image_hash.py): a flipped copy of a listed image stays."""
    (tmp_path / "in").mkdir()
    flipped = encode(photos[5].transpose(Image.FLIP_LEFT_RIGHT))
    src = make_tar(tmp_path / "in" / "00000.tar", {"flip.jpg": flipped, "other.jpg": encode(photos[6])})
    listed = write_hex_list(tmp_path / "pdq.txt", [reference_hash(encode(photos[5]))])
    argv = ["run", str(src), "--image-hash", "pdq", "--blocklist", str(listed), "--output", str(tmp_path / "a")]

    code, report = run(argv, tmp_path / "a.json")

    assert code == 0 and report["shards"][0]["rows_removed"] == 0
    assert report["shards"][0]["output_via"] == "byte_copy"  # the scan found nothing: copied, not rewritten
    assert report["shards"][0]["images"] == {
        "hashed": 2, "matched": 0, "undecodable": 0, "distances": {}, "matched_low_quality": 0,
    }  # fmt: skip
    assert (tmp_path / "a" / "00000.tar").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("on_undecodable", ["keep", "remove"])
def test_undecodable_images_are_counted_and_kept_unless_asked(photos, tmp_path: Path, on_undecodable: str) -> None:
    images = {
        "good.jpg": encode(photos[1]),
        "garbage.jpg": b"\xff\xd8\xff\xe0 not really a jpeg",
        "truncated.png": encode(photos[2], "PNG")[:300],
        "listed.jpg": encode(photos[3]),
    }
    src, argv = image_job(tmp_path, images, [reference_hash(encode(photos[3]))], "--on-undecodable", on_undecodable)

    code, report = run(argv, tmp_path / "report.json")

    assert code == 0, report["shards"][0]["error"]
    gone = {"listed"} | ({"garbage", "truncated"} if on_undecodable == "remove" else set())
    _, expected = reference_tar(src, lambda sample: sample_key(sample[0].name) in gone)
    assert (tmp_path / "out" / "00000.tar").read_bytes() == expected
    images_seen = report["shards"][0]["images"]
    assert (images_seen["hashed"], images_seen["matched"], images_seen["undecodable"]) == (2, 1, 2)
    assert images_seen["distances"] == {str(0): 1}


def test_a_sample_without_an_image_fails_its_shard_unless_kept(photos, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    src = tmp_path / "in" / "00000.tar"
    make_tar(src, {"a.jpg": encode(photos[1]), "b.txt2": b"no image here"})
    listed = write_hex_list(tmp_path / "pdq.txt", [reference_hash(encode(photos[9]))])
    base = ["run", str(src), "--image-hash", "pdq", "--blocklist", str(listed)]

    code, report = run([*base, "--output", str(tmp_path / "a")], tmp_path / "a.json")
    assert code == 1
    assert "sample 'b' has no image member" in report["shards"][0]["error"]
    assert not (tmp_path / "a" / "00000.tar").exists()

    code, report = run([*base, "--output", str(tmp_path / "b"), "--on-unkeyed", "keep"], tmp_path / "b.json")
    assert code == 0 and report["shards"][0]["unkeyed"] == 1
    assert (tmp_path / "b" / "00000.tar").read_bytes() == src.read_bytes()


def test_bad_lists_and_flags_are_refused_in_one_line(photos, tmp_path: Path, capsys) -> None:
    (tmp_path / "in").mkdir()
    src = make_tar(tmp_path / "in" / "00000.tar", {"a.jpg": encode(photos[1])})
    bad = tmp_path / "bad.txt"
    bad.write_text("# list\n" + "0" * 64 + "\n" + "not-a-hash\n")
    good = write_hex_list(tmp_path / "pdq.txt", [bytes(32)])
    out = str(tmp_path / "out")
    cases = {
        ("--blocklist", str(bad)): "line 3: not a PDQ hash",
        ("--blocklist", str(good), "--max-distance", "70"): "--max-distance 70",
        ("--blocklist", str(good), "--mode", "allow"): "--image-hash pdq removes",
        ("--blocklist", str(good), "--format", "parquet"): "with --format webdataset or img2dataset",
        ("--blocklist", str(good), "--key-hash", "md5"): "leave out",
    }
    for extra, message in cases.items():
        code = cli.main(["run", str(src), "--output", out, "--image-hash", "pdq", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, extra
        assert len(err) == 1 and message in err[0], (extra, err)
    for alone in (["--on-undecodable", "remove"], ["--max-distance", "20"]):
        assert cli.main(["run", str(src), "--output", out, "--blocklist", str(good), *alone]) == 2
        assert "go" in capsys.readouterr().err
    assert not Path(out).exists()


# -- img2dataset sets, as img2dataset 1.47 wrote them ---------------------------------------------------

STEMS = [f"{i:05d}" for i in range(4)]


def unpack(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for stem in STEMS:
        (dest / f"{stem}.tar").write_bytes(gzip.decompress((FIXTURE / "full" / f"{stem}.tar.gz").read_bytes()))
        for ext in (".parquet", "_stats.json"):
            shutil.copyfile(FIXTURE / "full" / f"{stem}{ext}", dest / f"{stem}{ext}")
    return dest


def listed_samples(full: Path) -> dict[str, bytes]:
    """Samples to remove: the images of shards 0 and 2 whose key ends in 1, re-encoded at quality 90
    (as a list made from another copy would hold them) and hashed by the reference. The fixture's
    images are mostly noise, whose hashes move further under coarser requantization than a photo's."""
    chosen = {}
    for stem in ("00000", "00002"):
        with tarfile.open(full / f"{stem}.tar") as tar:
            for member in tar:
                if member.name.endswith(".jpg") and member.name[:-4].endswith("1"):
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    copy = encode(Image.open(io.BytesIO(data)).convert("RGB"), quality=90)
                    chosen[member.name[:-4]] = reference_hash(copy)
    return chosen


@pytest.mark.parametrize("where", ["local", "s3"])
def test_img2dataset_sets_lose_the_matched_samples_rows_and_counts(
    tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    full = unpack(tmp_path / "full")
    chosen = listed_samples(full)
    assert len(chosen) >= 3
    listed = write_hex_list(tmp_path / "pdq.txt", list(chosen.values()))
    if where == "local":
        inputs, out = str(full / "{00000..00003}.tar"), str(tmp_path / "out")
        read = lambda name: (tmp_path / "out" / name).read_bytes()  # noqa: E731
        extra: list[str] = []
    else:
        endpoint, client, bucket = (request.getfixturevalue(n) for n in ("s3_endpoint", "s3_client", "bucket"))
        for path in sorted(full.iterdir()):
            client.put_object(Bucket=bucket, Key=f"laion/{path.name}", Body=path.read_bytes())
        inputs, out = f"s3://{bucket}/laion/{{00000..00003}}.tar", f"s3://{bucket}/clean/"
        read = lambda name: s3_get(client, bucket, f"clean/{name}")  # noqa: E731
        extra = ["--s3-endpoint-url", endpoint]

    argv = ["run", inputs, "--format", "img2dataset", "--output", out, "--image-hash", "pdq", "--blocklist",
            str(listed), *extra]  # fmt: skip
    code, report = run(argv, tmp_path / "report.json")

    assert code == 0, [s["error"] for s in report["shards"]]
    for stem, shard in zip(STEMS, report["shards"], strict=True):
        gone = {key for key in chosen if key[:5] == stem}  # img2dataset's keys: the shard number, then the row
        src = full / f"{stem}.tar"
        _, expected_tar = reference_tar(src, lambda sample, gone=gone: sample_key(sample[0].name) in gone)
        assert read(f"{stem}.tar") == expected_tar, stem
        table = read_parquet(full / f"{stem}.parquet")
        expected = table.filter(pc.invert(pc.is_in(table["key"], pa.array(sorted(gone), pa.string()))))
        assert read_parquet(read(f"{stem}.parquet")).equals(expected), stem
        stats_in = json.loads((full / f"{stem}_stats.json").read_text())
        stats_out = json.loads(read(f"{stem}_stats.json"))
        assert stats_out["count"] == stats_in["count"] - len(gone)
        assert stats_out["successes"] == stats_in["successes"] - len(gone)
        assert (shard["rows_in"], shard["rows_removed"]) == (table.num_rows, len(gone))
        with tarfile.open(src) as tar:
            images = sum(m.name.endswith(".jpg") for m in tar)
        assert shard["images"]["hashed"] + shard["images"]["undecodable"] == images
        assert shard["images"]["matched"] == len(gone)
        if not gone:
            assert shard["output_via"] in ("byte_copy", "server_copy")
    verify = ["verify", out, "--image-hash", "pdq", "--blocklist", str(listed), *extra]
    assert cli.main(verify) == 0  # each set read as one: its tar's images hashed again, its Parquet's rows counted


def test_a_parquet_shard_in_an_image_run_fails_alone(photos, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    src = make_tar(tmp_path / "in" / "00000.tar", {"a.jpg": encode(photos[1]), "b.jpg": encode(photos[2])})
    pq.write_table(pa.table({"url": ["x"]}), tmp_path / "in" / "00001.parquet")
    listed = write_hex_list(tmp_path / "pdq.txt", [reference_hash(encode(photos[2]))])
    argv = ["run", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--image-hash", "pdq",
            "--blocklist", str(listed)]  # fmt: skip

    code, report = run(argv, tmp_path / "report.json")

    assert code == 1
    tar, parquet = report["shards"]
    assert tar["status"] == "done" and tar["rows_removed"] == 1
    assert parquet["status"] == "failed" and "is a parquet shard, and --image-hash matches" in parquet["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("_")) == ["00000.tar"]
    _, expected = reference_tar(src, lambda sample: sample_key(sample[0].name) == "b")
    assert (tmp_path / "out" / "00000.tar").read_bytes() == expected


def test_matches_of_featureless_images_are_counted_apart(photos, tmp_path: Path) -> None:
    """PDQ calls hashes of quality under 50 unreliable: a flat image's match is removed, and counted apart."""
    flat = encode(Image.new("RGB", (256, 256), (120, 130, 140)))
    assert pdqhash.compute(np.asarray(Image.open(io.BytesIO(flat)).convert("RGB")))[1] < 50
    images = {"flat.jpg": flat, "photo.jpg": encode(photos[4])}
    _, argv = image_job(tmp_path, images, [reference_hash(flat), reference_hash(encode(photos[4]))])

    code, report = run(argv, tmp_path / "report.json")

    assert code == 0 and report["shards"][0]["rows_removed"] == 2
    assert report["shards"][0]["images"]["matched_low_quality"] == 1
    assert report["totals"]["images"]["matched_low_quality"] == 1


def test_verify_finds_a_listed_image_left_in_an_output(photos, tmp_path: Path, capsys) -> None:
    (tmp_path / "in").mkdir()
    src = make_tar(tmp_path / "in" / "00000.tar", {"a.jpg": encode(photos[1]), "b.jpg": encode(photos[2])})
    listed = write_hex_list(tmp_path / "pdq.txt", [reference_hash(encode(photos[2], quality=70))])
    out = tmp_path / "out"
    assert cli.main(["run", str(src), "--output", str(out), "--image-hash", "pdq", "--blocklist", str(listed)]) == 0
    verify = ["verify", str(out), "--image-hash", "pdq", "--blocklist", str(listed)]
    assert cli.main(verify) == 0
    capsys.readouterr()

    shutil.copyfile(src, out / "00000.tar")  # the unfiltered tar where the output should be

    assert cli.main(verify) == 1
    err = capsys.readouterr().err
    assert "00000.tar: 1 listed keys remain" in err, err


def test_options_from_a_config_file_or_the_api(tmp_path: Path) -> None:
    from streamfilter.spec import build_spec, load_config

    config = tmp_path / "job.toml"
    config.write_text('image_hash = "pdq"\nmax_distance = 20\non_undecodable = "remove"\n')
    spec = build_spec({**load_config(str(config)), "inputs": ["a.tar"], "output": "out", "blocklist": ["l.txt"]})
    assert (spec.key.image, spec.key.max_distance, spec.on_undecodable) == ("pdq", 20, "remove")
    assert spec.key.to_dict()["max_distance"] == 20  # receipts tell runs at another distance apart
    assert "image" not in build_spec({"inputs": ["a.tar"], "output": "o", "blocklist": ["l"]}).key.to_dict()
    with pytest.raises(UsageError, match="--max-distance 'far'"):
        build_spec({"inputs": ["a.tar"], "output": "o", "blocklist": ["l"], "image_hash": "pdq", "max_distance": "far"})


def test_an_image_too_large_to_read_whole_is_undecodable(photos, tmp_path: Path, monkeypatch) -> None:
    """Past the bytes a member may be read whole (64 MiB; 20 KB here), an image is kept and counted undecodable."""
    from streamfilter.formats import webdataset as wds

    monkeypatch.setattr(wds, "MAX_WANTED_BYTES", 20_000)
    big = encode(photos[1], "PNG")
    small = encode(photos[2], quality=30)
    assert len(big) > 20_000 > len(small)
    hashes = [reference_hash(encode(photos[1])), reference_hash(small)]
    src, argv = image_job(tmp_path, {"big.png": big, "small.jpg": small}, hashes)

    code, report = run(argv, tmp_path / "report.json")

    assert code == 0, report["shards"][0]["error"]
    images_seen = report["shards"][0]["images"]
    assert (images_seen["hashed"], images_seen["matched"], images_seen["undecodable"]) == (1, 1, 1)
    _, expected = reference_tar(src, lambda sample: sample_key(sample[0].name) == "small")
    assert (tmp_path / "out" / "00000.tar").read_bytes() == expected


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_an_image_past_the_decompression_bomb_size_is_undecodable(photos, tmp_path: Path, monkeypatch) -> None:
    """Past Pillow's bomb limit (89 megapixels; 40,000 pixels here) an image is undecodable, not a failed shard."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)
    small = encode(photos[3].resize((128, 128)))
    hashes = [reference_hash(encode(photos[2])), reference_hash(small)]
    _, argv = image_job(tmp_path, {"big.jpg": encode(photos[2]), "small.jpg": small}, hashes)

    code, report = run(argv, tmp_path / "report.json")

    assert code == 0, report["shards"][0]["error"]
    images_seen = report["shards"][0]["images"]
    assert (images_seen["hashed"], images_seen["matched"], images_seen["undecodable"]) == (1, 1, 1)
