"""Small row groups are fetched in blocks: a shard of many row groups over HTTP costs a few ranged GETs.

The server is aiohttp's static handler on loopback, counting the ranged GETs per object; the output
is checked against pyarrow's own filter, row group for row group.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from aiohttp import web
from helpers import (
    assert_read_once,
    assert_same_table,
    read_parquet,
    reference_filter,
    reference_row_group_counts,
    row_group_rows,
    sample,
    serve,
    shard_table,
    write_list,
    write_shard,
)

import streamfilter
from streamfilter.formats import parquet as pqfmt


def _counting_server(root: Path):
    gets: Counter[str] = Counter()

    @web.middleware
    async def count(request: web.Request, handler):
        if request.method == "GET" and "Range" in request.headers:
            gets[request.path] += 1
        return await handler(request)

    app = web.Application(middlewares=[count])
    app.router.add_static("/", root)
    return app, gets


def test_many_small_row_groups_take_few_requests(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "served"
    table = shard_table(6000, seed=4)
    src = write_shard(root / "a.parquet", table, row_group_size=150)  # 40 row groups
    groups = pq.ParquetFile(src).metadata.num_row_groups
    assert groups == 40
    listed = sample(table["url"], 97, offset=3)
    blocklist = write_list(tmp_path / "list.txt", listed)
    # Blocks of about a quarter of the shard: several blocks, each of several row groups.
    monkeypatch.setattr(pqfmt, "FETCH_BLOCK_BYTES", src.stat().st_size // 4)
    app, gets = _counting_server(root)
    with serve(app) as url:
        report = streamfilter.run([f"{url}/a.parquet"], output=str(tmp_path / "out"), blocklist=[str(blocklist)],
                                  scan=False, quiet=True)  # fmt: skip
    assert report.ok, [s.error for s in report.shards]
    out = tmp_path / "out" / "a.parquet"
    assert_same_table(read_parquet(out), reference_filter(read_parquet(src), listed))
    assert row_group_rows(out) == reference_row_group_counts(src, listed)
    assert_read_once(report.shards[0].bytes_read, src)
    # The footer, then one request a block (4 or 5 of them), where it was one a row group.
    assert 3 <= gets["/a.parquet"] <= 8, gets


def test_blocks_cover_every_row_group_once(tmp_path: Path, monkeypatch) -> None:
    src = write_shard(tmp_path / "b.parquet", shard_table(3000, seed=5), row_group_size=70)
    size = src.stat().st_size
    for block in (1, size // 10, size // 3, 10 * size):
        monkeypatch.setattr(pqfmt, "FETCH_BLOCK_BYTES", block)
        with src.open("rb") as f:
            shard = pqfmt.ParquetShard(f, "b")
            blocks = shard._blocks()
            spans = [pqfmt.row_group_span(shard.metadata, i) for i in range(shard.num_row_groups)]
        assert [i for first, last in blocks for i in range(first, last)] == list(range(len(spans)))
        for first, last in blocks:
            assert last - first == 1 or spans[last - 1][1] - spans[first][0] <= block
