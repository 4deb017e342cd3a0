"""Kept rows of a .npy streamed from one store to another in bounded chunks of whole rows.

The fallback to server-side assembly, and the only way between different stores:
each chunk is one ranged read covering its first to last kept row, the rows that
go are dropped from it as bytes (NumPy boolean indexing of a (rows, row_bytes)
uint8 view: the vectors are not decoded), and the chunks go to the upload as parts
once they add up to one (each byte joined into a part once). Memory is a chunk, a
part and the parts the store keeps in flight, whatever the file size.
The next chunk is fetched while the current one is cut and uploaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import numpy as np

from ..formats.npy import NpyHeader, select_rows

if TYPE_CHECKING:
    from ..store import ObjectInfo, Store

#: Bytes of rows fetched per ranged read.
CHUNK_BYTES = 8 * 1024 * 1024


async def stream_rows(
    source: Store, src: ObjectInfo, header: NpyHeader, keep: np.ndarray, head: bytes, target: Store, dst: str
) -> tuple[ObjectInfo, int]:
    """Write ``head`` and the kept rows of ``src`` to ``dst``; returns the output and the bytes fetched."""
    row, offset = header.row_bytes, header.data_offset
    per_chunk = max(1, CHUNK_BYTES // max(row, 1))
    spans = []  # (first row, end row, mask of the span or None when all stay): no per-row Python work
    for first in range(0, header.rows, per_chunk):
        part = keep[first : first + per_chunk]
        kept = np.flatnonzero(part)
        if kept.size:
            lo, hi = int(kept[0]), int(kept[-1]) + 1
            spans.append((first + lo, first + hi, None if hi - lo == kept.size else part[lo:hi]))
    fetched = 0
    send, receive = anyio.create_memory_object_stream[bytes](1)  # one chunk read ahead

    async def fetch_all() -> None:
        async with send:
            for start, end, _ in spans:
                await send.send(await source.read_range(src.uri, offset + start * row, offset + end * row))

    async with target.open_write(dst) as upload, anyio.create_task_group() as tg:
        tg.start_soon(fetch_all)
        # Chunks wait here until they make a part (parts may be longer than part_size): joined once into it.
        pending, size = [head], len(head)
        async with receive:
            for _, _, mask in spans:
                data = await receive.receive()
                fetched += len(data)
                if mask is not None:
                    data = await anyio.to_thread.run_sync(select_rows, data, row, mask)
                pending.append(data)
                size += len(data)
                if size >= target.part_size:
                    await upload.write_part(b"".join(pending))
                    pending, size = [], 0
        return await upload.commit(b"".join(pending)), fetched
