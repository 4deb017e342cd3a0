"""Throttled S3 requests still answer to their cancel scopes: a stop, a failed part's siblings and the
grace period all cancel requests in flight. With aiobotocore's adaptive rate limiter on, this loop never
finished, and not even an outer cancel scope ended it (its lock could be left held by a cancelled wait):
the loop runs in a thread of its own, so the test fails at the bound instead of hanging."""

from __future__ import annotations

import os
import random
import threading

import anyio
from fault_proxy import FaultProxy
from helpers import serve

from streamfilter.errors import ShardError
from streamfilter.store.base import RetryPolicy
from streamfilter.store.s3 import S3Store

#: Far above what the loop takes (about 5 s here): reached only by requests that ignore cancellation.
BOUND_SECONDS = 120
#: The scope of the requests that are meant to be answered (throttled, retried, read).
LONG_SCOPE_SECONDS = 10.0


def test_throttled_requests_stay_cancellable(s3_endpoint, s3_client, bucket) -> None:
    data = os.urandom(200_000)
    s3_client.put_object(Bucket=bucket, Key="obj", Body=data)
    proxy = FaultProxy(s3_endpoint)
    proxy.schedule(7, {"slowdown": 0.4, "delay": 0.2})
    rng = random.Random(3)
    outcomes = {"read": 0, "cancelled": 0, "gave up": 0}
    answered_long = 0
    unexpected: list[BaseException] = []

    async def main() -> None:
        # Short backoff sleeps keep the loop quick; every retry is still a throttled request.
        store = S3Store(proxy.url, retry=RetryPolicy(retries=8, max_seconds=0.05))

        async def one(i: int) -> None:
            # Half the requests are cut short at random; the other half have time to be throttled, however
            # slow the machine (on a loaded one, short scopes alone were cut before most requests were sent).
            timeout = rng.random() * 0.05 if i % 2 else LONG_SCOPE_SECONDS
            with anyio.move_on_after(timeout) as scope:
                try:
                    assert await store.read_range(f"s3://{bucket}/obj", i, i + 1000) == data[i : i + 1000]
                    outcomes["read"] += 1
                except ShardError as exc:  # retries used up on SlowDown: a failure, but an answer
                    if "SlowDown" not in str(exc):
                        unexpected.append(exc)
                    outcomes["gave up"] += 1
                except Exception as exc:
                    unexpected.append(exc)
            outcomes["cancelled"] += scope.cancelled_caught
            if not i % 2 and not scope.cancelled_caught:
                nonlocal answered_long
                answered_long += 1

        try:
            for _ in range(10):  # each round waits for its slowest long-scope request
                async with anyio.create_task_group() as tg:
                    for i in range(160):
                        tg.start_soon(one, i)
        finally:
            await store.aclose()

    finished = threading.Event()

    def loop() -> None:
        try:
            anyio.run(main)
        except BaseException as exc:
            unexpected.append(exc)
        finally:
            finished.set()

    with serve(proxy.app()) as proxy.url:
        threading.Thread(target=loop, name="throttled-loop", daemon=True).start()
        assert finished.wait(BOUND_SECONDS), f"throttled requests ignored their cancel scopes: {outcomes}"
    assert not unexpected, unexpected[:3]
    assert sum(outcomes.values()) == 1600
    assert proxy.injected["slowdown"] > 100, proxy.injected  # the store did throttle
    assert answered_long == 800, outcomes  # the long scopes' requests were answered (read, or gave up)
    assert outcomes["cancelled"] > 0, outcomes  # the scopes did cut requests short
