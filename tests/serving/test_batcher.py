"""Dynamic batching: concurrent submissions gathered into one call, bounded, and failures isolated."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from deltatune.serving.batcher import DynamicBatcher


def _run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_one_call_and_get_their_own_results():
    calls = []

    def fn(items):
        calls.append(list(items))
        return [x * 10 for x in items]

    async def main():
        b = DynamicBatcher(fn, max_batch_size=16, max_wait_ms=50)
        results = await asyncio.gather(*(b.submit([i, i + 100]) for i in range(5)))
        b.close()
        return results

    results = _run(main())
    assert results == [[i * 10, (i + 100) * 10] for i in range(5)]
    assert len(calls) == 1 and sorted(calls[0]) == sorted(x for i in range(5) for x in (i, i + 100))


def test_batches_never_exceed_max_batch_size_and_batching_off_runs_each_request_alone():
    sizes = []

    def fn(items):
        sizes.append(len(items))
        return items

    async def main(max_batch_size):
        b = DynamicBatcher(fn, max_batch_size=max_batch_size, max_wait_ms=20, on_batch=lambda n: None)
        out = await asyncio.gather(*(b.submit([i]) for i in range(10)))
        b.close()
        return out

    assert _run(main(4)) == [[i] for i in range(10)]
    assert max(sizes) <= 4 and sum(sizes) == 10 and len(sizes) >= 3
    sizes.clear()
    assert _run(main(1)) == [[i] for i in range(10)]
    assert sizes == [1] * 10


def test_a_failing_request_fails_alone():
    def fn(items):
        if "bad" in items:
            raise ValueError("bad input")
        return [s.upper() for s in items]

    async def main():
        b = DynamicBatcher(fn, max_batch_size=8, max_wait_ms=50)
        out = await asyncio.gather(b.submit(["a"]), b.submit(["bad"]), b.submit(["c"]), return_exceptions=True)
        b.close()
        return out

    good1, bad, good2 = _run(main())
    assert good1 == ["A"] and good2 == ["C"] and isinstance(bad, ValueError)


def test_the_function_runs_in_one_worker_thread_never_twice_at_once():
    active, most, threads = [0], [0], set()
    lock = threading.Lock()

    def fn(items):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        threads.add(threading.get_ident())
        time.sleep(0.01)
        with lock:
            active[0] -= 1
        return items

    async def main():
        b = DynamicBatcher(fn, max_batch_size=2, max_wait_ms=1)
        await asyncio.gather(*(b.submit([i]) for i in range(8)))
        b.close()

    _run(main())
    assert most[0] == 1 and len(threads) == 1


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatcher(lambda x: x, 0, 1)
    with pytest.raises(ValueError, match="max_wait_ms"):
        DynamicBatcher(lambda x: x, 1, -1)
