from __future__ import annotations

import asyncio
import gc
import threading
import weakref

import pytest

from service.errors import (
    DeadlineExceededError,
    InferenceFailedError,
    NotReadyError,
    OverloadedError,
)
from service.runtime.batcher import DynamicBatcher


class Recorder:
    """A run_batch that doubles its inputs and records every batch it saw."""

    def __init__(self, hold: threading.Event | None = None, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.hold = hold
        self.fail = fail
        self.thread_names: set[str] = set()

    def __call__(self, items: list[int]) -> list[int]:
        self.thread_names.add(threading.current_thread().name)
        if self.hold is not None:
            self.hold.wait(5)
        self.batches.append(list(items))
        if self.fail:
            raise RuntimeError("secret internal detail")
        return [2 * i for i in items]


def make(run, **kw) -> DynamicBatcher[int, int]:
    opts = {"max_batch_size": 4, "max_delay_ms": 20, "max_queue_size": 16}
    opts.update(kw)
    batcher: DynamicBatcher[int, int] = DynamicBatcher("m", run, **opts)
    batcher.start()
    return batcher


def deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_batcher_merges_concurrent_requests_and_keeps_each_result_with_its_item() -> None:
    hold = threading.Event()
    run = Recorder(hold)
    batcher = make(run)
    first = asyncio.create_task(batcher.submit(100, deadline()))
    await asyncio.sleep(0.05)  # the first batch is now running and held
    rest = [asyncio.create_task(batcher.submit(i, deadline())) for i in range(6)]
    await asyncio.sleep(0.05)
    hold.set()
    results = await asyncio.gather(first, *rest)
    assert [r.value for r in results] == [200, *[2 * i for i in range(6)]]
    assert run.batches[0] == [100]
    assert run.batches[1] == [0, 1, 2, 3]  # capped at max_batch_size, FIFO
    assert run.batches[2] == [4, 5]
    assert results[1].batch_size == 4
    assert run.thread_names == {"model-m_0"}  # always the one model thread
    await batcher.stop()


async def test_batcher_fails_every_future_when_the_run_raises_and_keeps_serving() -> None:
    hold = threading.Event()
    run = Recorder(hold, fail=True)
    batcher = make(run)
    blocker = asyncio.create_task(batcher.submit(0, deadline()))
    await asyncio.sleep(0.05)
    tasks = [asyncio.create_task(batcher.submit(i, deadline())) for i in range(1, 4)]
    await asyncio.sleep(0.02)
    hold.set()
    outcomes = await asyncio.gather(blocker, *tasks, return_exceptions=True)
    assert all(isinstance(o, InferenceFailedError) for o in outcomes)
    assert all("secret" not in str(o) for o in outcomes)
    run.fail = False
    assert (await batcher.submit(21, deadline())).value == 42
    assert batcher.stats.failed_batches == 2
    await batcher.stop()


async def test_batcher_fails_the_batch_when_outputs_do_not_match_inputs_one_to_one() -> None:
    seen: list[list[int]] = []

    def first_output_only(items: list[int]) -> list[int]:  # loses outputs past the first
        seen.append(list(items))
        return [2 * i for i in items][:1]

    batcher = make(first_output_only, max_delay_ms=50)
    items = [1, 2, 3]
    results = await asyncio.gather(
        *(batcher.submit(i, deadline()) for i in items), return_exceptions=True
    )
    assert seen[0] == items  # one batch of three, whose run came back short
    for item, result in zip(items, results, strict=True):
        # never another item's output: a failure, or this item's own value from a smaller run
        assert isinstance(result, InferenceFailedError) or (
            result.value == 2 * item and result.batch_size < len(items)
        )
    assert batcher.stats.failed_batches >= 1
    await batcher.stop()


async def test_requests_whose_deadline_passes_in_the_queue_get_504_and_never_run() -> None:
    hold = threading.Event()
    run = Recorder(hold)
    batcher = make(run)
    blocker = asyncio.create_task(batcher.submit(1, deadline()))
    await asyncio.sleep(0.05)
    with pytest.raises(DeadlineExceededError):
        await batcher.submit(7, deadline(0.1))
    hold.set()
    await blocker
    await asyncio.sleep(0.05)
    assert all(7 not in batch for batch in run.batches)
    await batcher.stop()


async def test_a_cancelled_request_is_dropped_before_inference() -> None:
    hold = threading.Event()
    run = Recorder(hold)
    batcher = make(run)
    blocker = asyncio.create_task(batcher.submit(1, deadline()))
    await asyncio.sleep(0.05)
    gone = asyncio.create_task(batcher.submit(9, deadline()))
    await asyncio.sleep(0.01)
    gone.cancel()
    hold.set()
    await blocker
    assert (await batcher.submit(3, deadline())).value == 6
    assert all(9 not in batch for batch in run.batches)
    await batcher.stop()


async def test_a_full_queue_fails_fast_with_overloaded() -> None:
    hold = threading.Event()
    batcher = make(Recorder(hold), max_queue_size=2, max_batch_size=1)
    running = asyncio.create_task(batcher.submit(0, deadline()))
    await asyncio.sleep(0.05)
    queued = [asyncio.create_task(batcher.submit(i, deadline())) for i in (1, 2)]
    await asyncio.sleep(0.01)
    with pytest.raises(OverloadedError) as info:
        await batcher.submit(3, deadline())
    assert info.value.headers["Retry-After"]
    hold.set()
    assert [r.value for r in await asyncio.gather(running, *queued)] == [0, 2, 4]
    await batcher.stop()


async def test_an_idle_batcher_does_not_wait_for_a_batch_that_will_not_come() -> None:
    batcher = make(Recorder(), max_delay_ms=10_000)
    # with a 10 s max delay, a lone request must still be answered at once
    result = await asyncio.wait_for(batcher.submit(5, deadline()), timeout=2)
    assert result.value == 10
    await batcher.stop()


async def test_stop_finishes_queued_work_then_refuses_new_requests() -> None:
    hold = threading.Event()
    run = Recorder(hold)
    batcher = make(run, max_batch_size=2)
    tasks = [asyncio.create_task(batcher.submit(i, deadline())) for i in range(5)]
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(batcher.stop(drain_timeout_s=5))
    await asyncio.sleep(0.01)
    with pytest.raises(NotReadyError):
        await batcher.submit(99, deadline())
    hold.set()
    await stopping
    assert [t.result().value for t in tasks] == [0, 2, 4, 6, 8]


# -- a lone request on an idle model ---------------------------------------------------------------
def lone_job(value: int, calls: list[str]):
    """A job as the routes write it: prepare, run a batch of one, finish, on the model thread."""

    def job(run_one):
        calls.append(threading.current_thread().name)
        return run_one(value + 1) + 1000

    return job


async def test_a_lone_run_prepares_runs_and_finishes_in_one_job_on_the_model_thread() -> None:
    run = Recorder()
    batcher = make(run)
    assert batcher.idle
    calls: list[str] = []
    value, timing = await batcher.run_alone(lone_job(20, calls), deadline())
    assert value == 2 * 21 + 1000
    assert calls == ["model-m_0"] and run.thread_names == {"model-m_0"}
    assert run.batches == [[21]]
    assert (timing.batch_size, timing.queue_ms) == (1, 0.0) and timing.inference_ms > 0
    assert (batcher.stats.batches, batcher.stats.items, batcher.stats.batch_sizes) == (1, 1, {1: 1})
    assert batcher.idle
    await batcher.stop()


async def test_a_batch_taken_off_the_queue_keeps_the_model_busy_until_it_has_run() -> None:
    hold = threading.Event()
    batcher = make(Recorder(hold))
    task = asyncio.create_task(batcher.submit(1, deadline()))
    await asyncio.sleep(0.05)
    assert batcher.queue_depth == 0 and not batcher.idle
    hold.set()
    assert (await task).value == 2
    assert batcher.idle
    await batcher.stop()


async def test_the_model_is_not_idle_while_a_lone_run_runs_and_runs_never_overlap() -> None:
    hold = threading.Event()
    run = Recorder(hold)
    batcher = make(run)
    lone = asyncio.create_task(batcher.run_alone(lone_job(0, []), deadline()))
    await asyncio.sleep(0.05)  # the lone run is held on the model thread
    assert not batcher.idle
    queued = [asyncio.create_task(batcher.submit(i, deadline())) for i in (5, 6)]
    await asyncio.sleep(0.05)
    assert run.batches == []  # the batch waits for the model thread, it does not run beside
    hold.set()
    assert (await lone)[0] == 1002
    assert [r.value for r in await asyncio.gather(*queued)] == [10, 12]
    assert run.batches == [[1], [5, 6]]
    assert batcher.idle
    await batcher.stop()


async def test_a_failing_lone_run_fails_like_a_batch_of_one_and_other_errors_pass_through() -> None:
    run = Recorder(fail=True)
    batcher = make(run)
    with pytest.raises(InferenceFailedError) as info:
        await batcher.run_alone(lone_job(0, []), deadline())
    assert "secret" not in str(info.value)
    assert batcher.stats.failed_batches == 1

    def bad_input(run_one):
        raise DeadlineExceededError("raised while preparing")  # e.g. a 4xx for a bad image

    with pytest.raises(DeadlineExceededError, match="while preparing"):
        await batcher.run_alone(bad_input, deadline())
    assert batcher.stats.failed_batches == 1  # the model did not fail
    run.fail = False
    assert (await batcher.run_alone(lone_job(1, []), deadline()))[0] == 1004
    assert batcher.idle
    await batcher.stop()


async def test_a_lone_run_past_its_deadline_answers_at_the_deadline_and_the_model_stays_busy() -> (
    None
):
    hold = threading.Event()
    batcher = make(Recorder(hold))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DeadlineExceededError):
        await batcher.run_alone(lone_job(0, []), deadline(0.1))
    assert loop.time() - started < 2.0  # answered at the deadline, not when the run ended
    assert not batcher.idle  # the run still holds the model thread
    hold.set()
    for _ in range(100):
        if batcher.idle:
            break
        await asyncio.sleep(0.01)
    assert batcher.idle
    # it ran to the end, its result dropped: counted as any batch whose requests expired running
    assert batcher.stats.batches == 1
    await batcher.stop()
    with pytest.raises(NotReadyError):
        await batcher.run_alone(lone_job(0, []), deadline())


async def test_stop_answers_what_it_cut_off_at_once_with_not_ready() -> None:
    """A batch still running when the drain times out, and a lone job that never started."""
    hold = threading.Event()
    batcher = make(Recorder(hold))
    loop = asyncio.get_running_loop()
    held = asyncio.create_task(batcher.submit(1, deadline(30)))
    await asyncio.sleep(0.05)  # a batch holds the model thread
    lone = asyncio.create_task(batcher.run_alone(lone_job(0, []), deadline(30)))
    await asyncio.sleep(0.05)  # the lone job waits behind it
    threading.Timer(0.3, hold.set).start()  # stop() waits (off the loop) for the held run
    started = loop.time()
    await batcher.stop(drain_timeout_s=0.1)
    for task in (held, lone):
        with pytest.raises(NotReadyError, match="shutting down"):
            await task
    assert loop.time() - started < 5  # not at their 30 s deadline


async def test_stop_waits_for_a_stuck_run_without_blocking_the_event_loop() -> None:
    """A run held on the model thread: stop() returns only once it has ended, and the loop
    meanwhile keeps serving (every tick of a 10 ms ticker is on time)."""
    hold = threading.Event()
    batcher = make(Recorder(hold))
    loop = asyncio.get_running_loop()
    held = asyncio.create_task(batcher.submit(1, deadline(30)))
    await asyncio.sleep(0.05)  # the run holds the model thread
    stopping = asyncio.create_task(batcher.stop(drain_timeout_s=0.05))
    lags: list[float] = []
    for _ in range(30):  # 0.3 s of the run still held while stop() waits for it
        before = loop.time()
        await asyncio.sleep(0.01)
        lags.append(loop.time() - before - 0.01)
    assert not stopping.done()  # it waits for the model thread to end
    hold.set()
    await asyncio.wait_for(stopping, 5)
    assert max(lags) < 0.05, lags
    with pytest.raises(NotReadyError):
        await held
    assert all(not t.is_alive() for t in threading.enumerate() if t.name.startswith("model-m_"))


async def test_two_instances_run_two_batches_at_once_and_never_split_one() -> None:
    """Instance 0 is held on a batch; the next batch goes whole to instance 1 and finishes
    first; nothing is collected while both are busy, so the third batch is the full cap."""
    hold = threading.Event()
    held, free = Recorder(hold), Recorder()
    batcher = make([held, free])
    assert batcher.instances == 2
    first = asyncio.create_task(batcher.submit(100, deadline()))
    await asyncio.sleep(0.05)  # instance 0 now runs [100] and is held
    second = [asyncio.create_task(batcher.submit(i, deadline())) for i in range(3)]
    done = await asyncio.gather(*second)  # instance 1 answers while instance 0 is still held
    assert [r.value for r in done] == [0, 2, 4] and not first.done()
    assert held.batches == [] and free.batches == [[0, 1, 2]]
    assert free.thread_names == {"model-m-1_0"}
    free.hold = threading.Event()  # now both instances are busy: the next items wait, whole
    busy = asyncio.create_task(batcher.submit(7, deadline()))
    await asyncio.sleep(0.05)
    rest = [asyncio.create_task(batcher.submit(i, deadline())) for i in range(10, 16)]
    await asyncio.sleep(0.05)
    hold.set()
    free.hold.set()
    results = await asyncio.gather(first, busy, *rest)
    assert [r.value for r in results] == [200, 14, *[2 * i for i in range(10, 16)]]
    assert held.batches[0] == [100] and free.batches[1] == [7]
    later = sorted(held.batches[1:] + free.batches[2:])
    assert later == [[10, 11, 12, 13], [14, 15]]  # capped at max_batch_size, none split
    assert held.thread_names == {"model-m_0"}
    await batcher.stop()


async def test_a_lone_run_takes_an_instance_the_collector_is_not_holding() -> None:
    hold = threading.Event()
    first, second = Recorder(), Recorder()
    batcher = make([first, second])

    def job(run_one):  # the lone job holds its model thread
        hold.wait(5)
        return run_one(5)

    lone = asyncio.create_task(batcher.run_alone(job, deadline()))
    await asyncio.sleep(0.05)
    queued = await batcher.submit(3, deadline())  # the other instance is free: it runs now
    assert queued.value == 6 and not lone.done()
    hold.set()
    value, _ = await lone
    assert value == 10
    assert (first.batches, second.batches) in (([[5]], [[3]]), ([[3]], [[5]]))
    await batcher.stop()


async def test_a_stopped_batcher_is_freed_by_reference_counting_alone() -> None:
    """A retired model version must free its sessions when the registry lets it go, not when the
    cycle collector next runs: a reload would otherwise keep every old version resident."""
    gc.collect()
    gc.disable()
    try:
        batcher = make([Recorder(), Recorder()])
        assert (await batcher.submit(3, deadline())).value == 6
        await batcher.stop(1.0)
        gone = weakref.ref(batcher)
        del batcher
        await asyncio.sleep(0)  # the stop's own tasks finish
        assert gone() is None
    finally:
        gc.enable()
