"""DynamicBatcher: merges concurrent requests for one model into one run on its model thread.

Flow: ``submit`` puts an item on a bounded queue and awaits its future. One collector task per
model takes the first item, drains whatever else is already queued (up to ``max_batch_size``),
waits up to ``max_delay_ms`` for more only when the previous batch was not a singleton (an idle
server never waits for a batch that will not come), then runs the batch on a dedicated
single-thread executor. While the model runs, the next batch accumulates in the queue. Futures
are completed on the event loop by the collector. A batch whose run raises is retried in halves,
so an input that breaks the graph fails only its own request, not the ones batched with it.

A model may have several instances (``batching.instances``: sessions side by side, as Triton's
instance groups), each with its own model thread. The collector forms a batch only once an
instance is free and hands it to that one, so instances never split a batch between them.

A request that finds the model ``idle`` (nothing queued, nothing running) would be a batch of one
anyway: ``run_alone`` runs its preparation, the model and its postprocessing as one job on the
model thread, one thread hop instead of one per step (c=1 ``/detect`` 0.5 ms faster). Requests
arriving meanwhile queue as usual and form the next batch. It is the one execution path all the
same: the lone job is the payload of a batch of one that ``_run`` runs, under the same deadline,
failure, shutdown, stats and trace rules as every queued batch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import service.tracing as tracing
from service.errors import (
    ClientDisconnectedError,
    DeadlineExceededError,
    InferenceFailedError,
    NotReadyError,
    OverloadedError,
    ServiceError,
)
from service.runtime.batch_runner import BatchRunner

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")
R = TypeVar("R")
DisconnectCheck = Callable[[], Awaitable[bool]]
# Checking for a vanished client costs a receive() round trip on the loop; only items that have
# queued this long are checked (fresh ones almost never belong to a client that already left).
_DISCONNECT_CHECK_AFTER_S = 0.05


@dataclass(frozen=True)
class BatchResult(Generic[Out]):
    value: Out
    queue_ms: float  # submit → start of the run
    inference_ms: float  # the whole batch run (collate + session.run + split)
    batch_size: int
    trace: tracing.SpanContext | None = None  # the batch run's span, when it was traced


@dataclass(eq=False)
class _Item(Generic[In, Out]):
    payload: In
    future: asyncio.Future[BatchResult[Out]]
    deadline: float  # event-loop time
    enqueued: float
    is_disconnected: DisconnectCheck | None = None
    trace: tracing.SpanContext | None = None  # the submitting request's span, when it is traced


class _Queue(asyncio.Queue[_Item[In, Out]]):
    """The batcher's FIFO, whose head (the item queued longest) can be read for the scrape.
    ``_queue`` is the deque that ``asyncio.Queue._init`` makes (``LifoQueue`` and
    ``PriorityQueue`` override the same hooks)."""

    _queue: collections.deque[_Item[In, Out]]

    def oldest(self) -> _Item[In, Out] | None:
        return self._queue[0] if self._queue else None


@dataclass
class BatcherStats:
    batches: int = 0
    items: int = 0
    failed_batches: int = 0
    expired: int = 0
    dropped_disconnected: int = 0
    rejected_overloaded: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


BatchObserver = Callable[[int, float, float], None]  # batch size, mean queue s, inference s


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _join(executors: Sequence[ThreadPoolExecutor]) -> None:
    """Block until each executor's threads have ended (they were already told to shut down)."""
    for executor in executors:
        executor.shutdown(wait=True)


@dataclass
class _Instance(Generic[In, Out]):
    """One session's run and the single thread it runs on."""

    run_batch: Callable[[list[In]], Sequence[Out]]
    executor: ThreadPoolExecutor


class DynamicBatcher(Generic[In, Out]):
    """``await submit(payload, deadline)`` → ``BatchResult`` of ``run_batch([payload, ...])[i]``.

    ``run_batch`` runs on the model thread and must return exactly one output per input, in
    order; anything else fails the whole batch with ``InferenceFailedError``. A sequence of them
    is one per instance, each with a thread of its own.
    """

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[In]], Sequence[Out]]
        | Sequence[Callable[[list[In]], Sequence[Out]]],
        *,
        max_batch_size: int,
        max_delay_ms: float,
        max_queue_size: int,
        observer: BatchObserver | None = None,
        trace_attributes: Mapping[str, str | int | float | bool] | None = None,
    ) -> None:
        self.name = name
        runners = [run_batch] if callable(run_batch) else list(run_batch)
        self._instances: list[_Instance[In, Out]] = [
            _Instance(
                run,
                ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=f"model-{name}" + (f"-{i}" if i else "")
                ),
            )
            for i, run in enumerate(runners)
        ]
        self._free: asyncio.Queue[_Instance[In, Out]] | None = None
        self._runs: set[asyncio.Task[None]] = set()  # batches handed to an instance, running
        self.max_batch_size = max(1, max_batch_size)
        self.max_delay_s = max_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self._observer = observer
        # what every batch span of this model says: model, version, provider
        self._trace_attributes = dict(trace_attributes or {"ortserve.model": name})
        self._queue: _Queue[In, Out] | None = None
        self._collector: asyncio.Task[None] | None = None
        self._accepting = False
        self._last_batch_size = 1
        # a collector waiting for more items: woken once the queue holds ``_wanted`` (or by its
        # timer), not by every arrival, which cost a wait_for (a task and a timer) per item
        self._arrival: asyncio.Future[None] | None = None
        self._wanted = 0
        self._active = 0  # batches taken off the queue, or lone runs, not finished yet
        self.stats = BatcherStats()
        self.error: str | None = None  # set if the collector died: the model is then unhealthy

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._queue = _Queue(maxsize=self.max_queue_size)
        self._free = asyncio.Queue()
        for instance in self._instances:
            self._free.put_nowait(instance)
        self._accepting = True
        self._collector = asyncio.get_running_loop().create_task(
            self._collect(), name=f"batcher-{self.name}"
        )
        self._collector.add_done_callback(self._on_collector_done)

    @property
    def instances(self) -> int:
        return len(self._instances)

    def executor(self, instance: int) -> ThreadPoolExecutor:
        """Instance ``instance``'s model thread: the model owner runs worker processes' batches
        on it (``service.runtime.owner``), so they take turns with this batcher's own."""
        return self._instances[instance].executor

    def _on_collector_done(self, task: asyncio.Task[None]) -> None:
        self._died(task, "batch collector stopped")

    def _on_run_done(self, task: asyncio.Task[None]) -> None:
        self._runs.discard(task)
        self._died(task, "batch run failed outside the model")

    def _died(self, task: asyncio.Task[None], what: str) -> None:
        """A collector or run task that raised: the batcher can no longer be trusted to answer,
        so it fails what is queued and reports itself unhealthy."""
        if not task.cancelled() and task.exception() is not None:
            self.error = f"{what}: {type(task.exception()).__name__}"
            self._accepting = False
            log.error("model %s: %s", self.name, self.error, exc_info=task.exception())
            self._fail_queued(InferenceFailedError(f"model {self.name!r} is not serving"))

    @property
    def healthy(self) -> bool:
        return self._accepting and self.error is None

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def oldest_queued_s(self) -> float:
        """How long the item at the head of the queue has waited (0 when empty): an item
        still there past its deadline means the model thread is behind by a whole deadline."""
        head = self._queue.oldest() if self._queue is not None else None
        return asyncio.get_running_loop().time() - head.enqueued if head is not None else 0.0

    def admit(self, items: int) -> None:
        """Refuse (429) a request whose ``items`` would not all fit in the queue now, before
        any of its work is done: decoding and tokenizing cost more than the refusal."""
        if self._queue is not None and self._queue.qsize() + items > self.max_queue_size:
            self.stats.rejected_overloaded += 1
            raise OverloadedError(
                f"model {self.name!r} queue is full ({self.max_queue_size} requests); retry later"
            )

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing running: a request now would run alone."""
        return self._active == 0 and self._queue is not None and self._queue.empty()

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Stop accepting; finish queued and in-flight work within the timeout; fail the rest."""
        self._accepting = False
        if self._queue is not None and self._collector is not None:
            if not self._collector.done():  # a dead collector drains nothing: do not wait for it
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._drained(), timeout=drain_timeout_s)
            tasks = [self._collector, *self._runs]
            for task in tasks:
                task.cancel()
            # a death was logged when it happened (_on_collector_done); shutdown goes on
            await asyncio.gather(*tasks, return_exceptions=True)
            # the cancelled collector's traceback holds its frame, which holds this batcher: let
            # the task go, or the model's sessions wait for the cycle collector to be freed
            self._collector = None
        self._fail_queued(self._shutting_down())
        executors = [instance.executor for instance in self._instances]
        for executor in executors:  # drop what has not started; never blocks
            executor.shutdown(wait=False, cancel_futures=True)
        # a run still going (stuck, or cut off by the drain timeout) ends in its own time:
        # wait for the model threads on a worker thread, never on the event loop
        await asyncio.to_thread(_join, executors)

    async def _drained(self) -> None:
        """Until nothing is queued and nothing runs (batches and lone runs)."""
        assert self._queue is not None
        await self._queue.join()
        if self._runs:
            await asyncio.wait(set(self._runs))

    def _fail_queued(self, error: ServiceError) -> None:
        if self._queue is None:
            return
        while not self._queue.empty():
            item = self._queue.get_nowait()
            self._queue.task_done()
            if not item.future.done():
                item.future.set_exception(error)

    # -- submit ----------------------------------------------------------------------------
    async def submit(
        self,
        payload: In,
        deadline: float,
        is_disconnected: DisconnectCheck | None = None,
    ) -> BatchResult[Out]:
        """Queue one item; ``deadline`` is in ``loop.time()`` seconds."""
        loop = asyncio.get_running_loop()
        now = self._accept(deadline, loop)
        assert self._queue is not None  # _accept: started and accepting
        item: _Item[In, Out] = _Item(
            payload, loop.create_future(), deadline, now, is_disconnected, tracing.capture()
        )
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.stats.rejected_overloaded += 1
            raise OverloadedError(
                f"model {self.name!r} queue is full ({self.max_queue_size} requests); retry later"
            ) from None
        arrival = self._arrival
        if arrival is not None and self._queue.qsize() >= self._wanted and not arrival.done():
            arrival.set_result(None)
        # a timer on the loop is much cheaper than asyncio.wait_for (no extra task per item)
        timer = loop.call_at(deadline, self._expire, item)
        try:
            return await item.future
        except asyncio.CancelledError:
            # the caller went away: a queued item is then skipped by the collector
            item.future.cancel()
            raise
        finally:
            timer.cancel()

    def _expire(self, item: _Item[In, Out]) -> None:
        # not yet run: the collector skips it; already running: its result is discarded
        if not item.future.done():
            item.future.set_exception(self._late())

    # -- the rules both paths share: admission, deadlines, shutdown, failures, stats ---------
    def _accept(self, deadline: float, loop: asyncio.AbstractEventLoop) -> float:
        """Whether a request may start now (queued, or run alone): the model accepts requests
        and the deadline has not passed. Returns the loop time it checked at."""
        if not self._accepting or self._queue is None:
            raise NotReadyError(f"model {self.name!r} is not accepting requests")
        now = loop.time()
        if deadline <= now:
            raise DeadlineExceededError("the request deadline passed before it could be queued")
        return now

    def _late(self) -> DeadlineExceededError:
        """A request whose deadline passed before its run ended (queued or running)."""
        return DeadlineExceededError(
            f"model {self.name!r} did not answer within the request deadline"
        )

    def _shutting_down(self) -> NotReadyError:
        """What ``stop()`` answers to work it cut off or never started."""
        return NotReadyError(f"model {self.name!r} is shutting down")

    def _check_outputs(self, outputs: Sequence[Out], size: int) -> None:
        if len(outputs) != size:
            raise _OutputCountError(f"run_batch returned {len(outputs)} outputs for {size}")

    def _span(
        self,
        links: list[tracing.SpanContext | None],
        started_ns: int,
        error: BaseException | None,
        parent: tracing.Context | None = None,
    ) -> tracing.SpanContext | None:
        """A run's batch span: linked to the span of each traced request in it, or, for a lone
        run, the child of its request's span (``parent``)."""
        return tracing.batch_span(
            self.name,
            self._trace_attributes,
            links,
            started_ns,
            tracing.now_ns(),
            error=error,
            parent=parent,
        )

    def _ran(
        self,
        size: int,
        mean_queue_s: float,
        inference_s: float,
        trace: tracing.SpanContext | None = None,
    ) -> None:
        """Count a batch that ran, and tell the observer (with the batch span current, so that
        the metrics' exemplars point to it)."""
        self.stats.batches += 1
        self.stats.items += size
        self.stats.batch_sizes[size] = self.stats.batch_sizes.get(size, 0) + 1
        if self._observer is None:
            return
        if trace is None:
            self._observer(size, mean_queue_s, inference_s)
            return
        with tracing.using(trace):
            self._observer(size, mean_queue_s, inference_s)

    def _failure(self, size: int, exc: BaseException | None) -> ServiceError:
        """Log a batch whose run failed; the error its requests get (internals never shown)."""
        log.error("model %s: batch of %d failed", self.name, size, exc_info=exc)
        if isinstance(exc, ServiceError):
            return exc
        return InferenceFailedError(f"model {self.name!r} failed to run this batch")

    # -- a lone request ------------------------------------------------------------------------
    async def run_alone(
        self, job: Callable[[Callable[[In], Out]], R], deadline: float
    ) -> tuple[R, BatchResult[None]]:
        """Run ``job(run_one)`` on the model thread, where ``run_one(payload)`` is this model's
        run on a batch of one. For a request that finds the model ``idle``: its preparation,
        run and postprocessing then cost one thread hop instead of one each, as the batch would
        have held it alone anyway. It is a batch of one for everything else: ``_run`` runs it,
        with the same deadline, failure, shutdown, stats and trace rules as a queued batch;
        an error the job itself raises (a bad image while preparing) reaches the caller as is."""
        loop = asyncio.get_running_loop()
        now = self._accept(deadline, loop)
        lone: _Lone[In, Out, R] = _Lone(job, tracing.current())
        item: _Item[Any, Any] = _Item(lone, loop.create_future(), deadline, now)
        # an instance the collector is not holding, else the first (an idle model with one
        # instance: the collector holds it while it waits for an item, and runs nothing on it)
        free = self._free
        borrowed = free.get_nowait() if free is not None and not free.empty() else None
        self._active += 1
        run = loop.create_task(self._run_lone(borrowed or self._instances[0], item, borrowed))
        self._runs.add(run)
        run.add_done_callback(self._on_run_done)
        timer = loop.call_at(deadline, self._expire, item)
        try:
            result: BatchResult[R] = await item.future
        finally:
            timer.cancel()
        return result.value, BatchResult(None, 0.0, result.inference_ms, 1, result.trace)

    async def _run_lone(
        self,
        instance: _Instance[In, Out],
        item: _Item[Any, Any],
        borrowed: _Instance[In, Out] | None,
    ) -> None:
        try:
            await self._run(instance, [item], asyncio.get_running_loop())
        except asyncio.CancelledError:
            if not item.future.done():  # stop() cut it off, or it never started
                item.future.set_exception(self._shutting_down())
            raise
        finally:
            self._active -= 1
            if borrowed is not None and self._free is not None:
                self._free.put_nowait(borrowed)

    def _lone_work(self, instance: _Instance[In, Out], lone: _Lone[In, Out, Any]) -> list[Any]:
        """A lone job on the model thread: its one model run timed and traced (the batch span
        is the request's child), the job's own errors told apart from the model's."""

        def run_one(payload: In) -> Out:
            started = time.perf_counter()
            span_ns = tracing.now_ns()
            try:
                outputs = instance.run_batch([payload])
                self._check_outputs(outputs, 1)
            except Exception as exc:
                lone.trace = self._trace_alone(lone.parent, span_ns, exc)
                raise _LoneRunError() from exc
            lone.run_s = time.perf_counter() - started
            lone.trace = self._trace_alone(lone.parent, span_ns, None)
            return outputs[0]

        try:
            return [lone.job(run_one)]
        except _LoneRunError:
            raise
        except Exception as exc:
            raise _JobError() from exc

    def _trace_alone(
        self, parent: tracing.Context | None, span_ns: int, error: BaseException | None
    ) -> tracing.SpanContext | None:
        """The batch span of a lone run (on the model thread, as the run ends)."""
        if parent is None:
            return None
        return self._span([None], span_ns, error, parent)

    # -- collector -------------------------------------------------------------------------
    def _fresh(self, item: _Item[In, Out], now: float) -> bool:
        """The common case without a coroutine: pending, in time and queued too briefly for a
        disconnect check (``_alive`` does the rest)."""
        return (
            not item.future.done()
            and item.deadline > now
            and (item.is_disconnected is None or now - item.enqueued <= _DISCONNECT_CHECK_AFTER_S)
        )

    async def _alive(self, item: _Item[In, Out], now: float) -> bool:
        if self._fresh(item, now):
            return True
        if item.future.done():  # cancelled: deadline or client went away
            return False
        if item.deadline <= now:
            self.stats.expired += 1
            item.future.set_exception(
                DeadlineExceededError("the request deadline passed while it was queued")
            )
            return False
        waited_long = now - item.enqueued > _DISCONNECT_CHECK_AFTER_S
        if item.is_disconnected is not None and waited_long and await self._gone(item):
            self.stats.dropped_disconnected += 1
            # an error, not cancel(): a CancelledError would escape the route as an unhandled
            # "Exception in ASGI application" and be counted as a 500
            if not item.future.done():
                item.future.set_exception(
                    ClientDisconnectedError("the client disconnected while the request was queued")
                )
            return False
        return True

    @staticmethod
    async def _gone(item: _Item[In, Out]) -> bool:
        assert item.is_disconnected is not None
        try:
            return await item.is_disconnected()
        except Exception:  # never let one request's transport kill the model's collector
            log.debug("disconnect check failed", exc_info=True)
            return False

    async def _collect(self) -> None:
        assert self._queue is not None
        assert self._free is not None
        queue, free = self._queue, self._free
        loop = asyncio.get_running_loop()
        while True:
            instance = await free.get()  # collect only for an instance that can run it now
            first = await queue.get()
            self._active += 1
            batch = await self._gather(first, queue, loop)
            if not batch:
                self._active -= 1
                free.put_nowait(instance)
                continue
            run = loop.create_task(self._run_on(instance, batch, queue, loop))
            self._runs.add(run)
            run.add_done_callback(self._on_run_done)

    async def _gather(
        self,
        first: _Item[In, Out],
        queue: asyncio.Queue[_Item[In, Out]],
        loop: asyncio.AbstractEventLoop,
    ) -> list[_Item[In, Out]]:
        """A batch that starts with ``first`` (empty when its client has already gone)."""
        if not await self._alive(first, loop.time()):
            queue.task_done()
            return []
        batch = [first]
        wait_until = loop.time() + (self.max_delay_s if self._last_batch_size > 1 else 0.0)
        while len(batch) < self.max_batch_size:
            if queue.empty():
                remaining = wait_until - loop.time()
                if remaining <= 0:
                    break
                await self._more(self.max_batch_size - len(batch), remaining, loop)
                continue
            item = queue.get_nowait()
            now = loop.time()
            if self._fresh(item, now) or await self._alive(item, now):
                batch.append(item)
            else:
                queue.task_done()
        return batch

    async def _more(self, wanted: int, timeout_s: float, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until the queue holds ``wanted`` items or ``timeout_s`` has passed."""
        arrival: asyncio.Future[None] = loop.create_future()
        self._arrival, self._wanted = arrival, wanted
        timer = loop.call_later(timeout_s, _settle, arrival)
        try:
            await arrival
        finally:
            timer.cancel()
            self._arrival = None

    async def _run_on(
        self,
        instance: _Instance[In, Out],
        batch: list[_Item[In, Out]],
        queue: asyncio.Queue[_Item[In, Out]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Run ``batch`` on ``instance``, then give the instance back to the collector."""
        try:
            await self._run(instance, batch, loop)
        except asyncio.CancelledError:
            # stop() gave up waiting for this batch: answer its requests now, not at their deadline
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(self._shutting_down())
            raise
        finally:
            for _ in batch:
                queue.task_done()
            self._active -= 1
            assert self._free is not None
            self._free.put_nowait(instance)

    async def _run(
        self,
        instance: _Instance[In, Out],
        batch: list[_Item[In, Out]],
        loop: asyncio.AbstractEventLoop,
        *,
        retry: bool = False,
    ) -> None:
        started = loop.time()
        started_ns = tracing.now_ns()
        self._last_batch_size = len(batch)
        lone = batch[0].payload if isinstance(batch[0].payload, _Lone) else None
        outputs: Sequence[Any]
        try:
            if lone is not None:
                outputs = await loop.run_in_executor(
                    instance.executor, self._lone_work, instance, lone
                )
            else:
                outputs = await loop.run_in_executor(
                    instance.executor, instance.run_batch, [item.payload for item in batch]
                )
            self._check_outputs(outputs, len(batch))
        except _JobError as exc:  # the lone job's own code: its error, as it raised it
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc.__cause__ or exc)
            return
        except Exception as raised:
            failed = raised.__cause__ if isinstance(raised, _LoneRunError) else raised
            await self._failed(instance, batch, loop, failed, lone is not None, retry, started_ns)
            return
        inference_s = loop.time() - started if lone is None else lone.run_s
        trace = self._trace(batch, started_ns, None) if lone is None else lone.trace
        queue_s = 0.0
        for item, output in zip(batch, outputs, strict=True):
            queue_s += started - item.enqueued
            if not item.future.done():
                item.future.set_result(
                    BatchResult(
                        output,
                        (started - item.enqueued) * 1000.0 if lone is None else 0.0,
                        inference_s * 1000.0,
                        len(batch),
                        trace,
                    )
                )
        self._ran(len(batch), queue_s / len(batch) if lone is None else 0.0, inference_s, trace)

    async def _failed(
        self,
        instance: _Instance[In, Out],
        batch: list[_Item[In, Out]],
        loop: asyncio.AbstractEventLoop,
        exc: BaseException | None,
        lone: bool,
        retry: bool,
        started_ns: int,
    ) -> None:
        """A run that raised: its requests fail, or, for a batch of several and an error that
        may be one input's, it is retried in halves."""
        if not lone:  # a lone run's span was made on the model thread, as the request's child
            self._trace(batch, started_ns, exc)
        if not retry:
            self.stats.failed_batches += 1
        pending = [item for item in batch if not item.future.done()]
        if len(pending) > 1 and not isinstance(exc, (ServiceError, _OutputCountError)):
            # one client's bad input (an out-of-range id, a value the graph cannot take)
            # must not fail the requests batched with it: bisect until the culprit runs alone
            log.warning(
                "model %s: batch of %d failed (%s); retrying in halves",
                self.name,
                len(batch),
                type(exc).__name__,
            )
            half = len(pending) // 2
            await self._run(instance, pending[:half], loop, retry=True)
            await self._run(instance, pending[half:], loop, retry=True)
            return
        error = self._failure(len(batch), exc)
        for item in batch:
            if not item.future.done():
                item.future.set_exception(error)

    def _trace(
        self, batch: list[_Item[In, Out]], started_ns: int, error: BaseException | None
    ) -> tracing.SpanContext | None:
        """The batch run's span, linked to the span of each request in it that is traced."""
        return self._span([item.trace for item in batch], started_ns, error)


class _OutputCountError(RuntimeError):
    """run_batch broke its contract (a bug in collate/split, not in one input): no retry."""


class _LoneRunError(Exception):
    """The model's run failed inside ``run_alone``'s job (the cause is chained)."""


class _JobError(Exception):
    """``run_alone``'s job failed in its own code, not the model's (the cause is chained)."""


@dataclass(eq=False)
class _Lone(Generic[In, Out, R]):
    """A lone request's job, as the payload of its batch of one (``run_alone``); the model
    thread fills in its run's time and span."""

    job: Callable[[Callable[[In], Out]], R]
    parent: tracing.Context | None  # the request's span: the batch span's parent
    run_s: float = 0.0
    trace: tracing.SpanContext | None = None


__all__ = ["BatchObserver", "BatchResult", "BatchRunner", "BatcherStats", "DynamicBatcher"]
