"""How many shards run at once by default: the CPUs a container may use, not the host's."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from streamfilter.concurrency import gather_limited, usable_cpus
from streamfilter.spec import DEFAULT_CONCURRENCY, build_spec

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", AFFINITY),  # no limit: every CPU this process may run on
        ("150000 100000\n", min(AFFINITY, 2)),  # 1.5 CPUs of quota: two threads can use it
        ("50000 100000\n", 1),  # half a CPU still leaves one
        ("100000 100000\n", 1),
        (f"{AFFINITY * 400000} 100000\n", AFFINITY),  # a quota above the affinity does not add CPUs
        ("garbage\n", AFFINITY),  # a file we do not understand is ignored
    ],
)
def test_usable_cpus_honours_a_cgroup_quota(tmp_path: Path, cpu_max: str, expected: int) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    assert usable_cpus(path) == expected


def test_usable_cpus_without_cgroup_file(tmp_path: Path) -> None:
    assert usable_cpus(tmp_path / "missing") == AFFINITY


def test_default_concurrency_follows_the_cpus() -> None:
    assert min(max(usable_cpus(), 2), 4) == DEFAULT_CONCURRENCY
    spec = build_spec({"inputs": ["a.parquet"], "output": "out/", "blocklist": ["b.txt"]})
    assert spec.concurrency == DEFAULT_CONCURRENCY


def test_gather_limited_keeps_order_and_bound() -> None:
    running, peak = [0], [0]

    async def work(i: int) -> int:
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        await anyio.sleep(0.001 * (5 - i % 5))  # later items finish first
        running[0] -= 1
        return i * i

    assert anyio.run(gather_limited, list(range(20)), work, 3) == [i * i for i in range(20)]
    assert peak[0] == 3


def test_gather_limited_reraises_the_first_failure() -> None:
    async def work(i: int) -> int:
        if i == 4:
            raise ValueError("item 4")
        return i

    with pytest.raises(ValueError, match="item 4"):
        anyio.run(gather_limited, list(range(8)), work, 2)


def test_gather_limited_cancels_the_rest_when_asked() -> None:
    """Without ``cancel_rest`` every call runs to its end; with it, the first failure cancels the others."""
    finished: list[int] = []

    async def work(i: int) -> int:
        if i == 0:
            raise ValueError("first")
        await anyio.sleep(0.2 * i)  # bounded: at most 0.6 s
        finished.append(i)
        return i

    for cancel_rest, expected in ((False, [1, 2, 3]), (True, [])):
        finished.clear()
        with pytest.raises(ValueError, match="first"):
            anyio.run(lambda cr=cancel_rest: gather_limited([0, 1, 2, 3], work, 4, cancel_rest=cr))
        assert finished == expected
