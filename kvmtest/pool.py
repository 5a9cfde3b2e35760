"""Processes as well as threads: how `kvmtest run --jobs N` and `kvmtest fuzz` fill the machine.

Most of a trace on real KVM is waiting inside the kernel (the first memory slot of a VM costs
milliseconds of wall time and almost no CPU, docs/host-findings.md#cost), which only
concurrency hides; the rest is Python, and one process runs Python on one core at a time (the
GIL). So the work goes to forked processes, each with its own threads: threads hide the
kernel's waits, processes use every core. Each child inherits the parent's state at the fork
(an open /dev/kvm, the host facts, the engine's caches so far); from then on its caches are
its own.

    with Pool(function, processes=2, threads=8) as pool:
        for key, item in enumerate(items):
            pool.submit(key, item)
        for _ in items:
            key, value = pool.get()     # in completion order; the caller restores its order

`function(item)` runs in a child; its return value (or the exception it raised, as a
PoolError) comes back pickled. A child that dies (a crash in C) is an error in the parent,
never a hang.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import queue
import threading
from multiprocessing import connection


class PoolError(Exception):
    """A task raised, or the worker process running it died."""


def default_processes(jobs: int) -> int:
    """Processes for `jobs` concurrent traces: one per core, each with jobs / processes threads;
    a single process for small jobs (forking costs more than it saves)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if jobs < 4:
        return 1
    return max(1, min(cores or 1, jobs // 2))


def _child(function, threads: int, tasks, results) -> None:
    """One reader of its own task pipe, `threads` workers, answers on its own result pipe
    (sent synchronously: nothing is buffered in a thread that a crash could lose)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    local: queue.Queue = queue.Queue()
    lock = threading.Lock()

    def loop() -> None:
        while True:
            task = local.get()
            if task is None:
                return
            key, item = task
            try:
                value = function(item)
            except BaseException as exc:  # handed to the parent
                value = PoolError(f"{type(exc).__name__}: {exc}")
            with lock:
                try:
                    results.send((key, value))
                except Exception as exc:  # an unpicklable value
                    results.send((key, PoolError(f"result not sent: {exc}")))

    workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    while True:
        try:
            task = tasks.recv()
        except (EOFError, OSError):
            break
        if task is None:
            break
        local.put(task)
    for _ in workers:
        local.put(None)
    for worker in workers:
        worker.join()


class _Child:
    def __init__(self, context, function, threads: int, n: int):
        task_r, self.tasks = context.Pipe(duplex=False)
        self.results, result_w = context.Pipe(duplex=False)
        self.process = context.Process(
            target=_child,
            args=(function, threads, task_r, result_w),
            daemon=True,
            name=f"kvmtest-pool-{n}",
        )
        self.process.start()
        task_r.close()
        result_w.close()  # only the child holds the write end: its death is an EOF here
        self.assigned: dict = {}
        self.broken = False  # a send found it dead; get() replaces it at its EOF


class Pool:
    def __init__(self, function, processes: int, threads: int):
        self._context = multiprocessing.get_context("fork")
        self._function = function
        self._threads = max(1, threads)
        self._pending: collections.deque = collections.deque()
        self._lost: list = []  # (key, PoolError) of tasks whose child died
        self.deaths = 0
        self._children = [self._spawn(n) for n in range(max(1, processes))]
        self._closed = False

    def _spawn(self, n: int) -> _Child:
        return _Child(self._context, self._function, self._threads, n)

    def submit(self, key, item) -> None:
        self._pending.append((key, item))
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand pending tasks to the least loaded children, at most 2 x threads each. A child
        that died since its last result breaks the pipe: its task goes to another child."""
        while self._pending:
            alive = [c for c in self._children if not c.broken]
            if not alive:
                return
            child = min(alive, key=lambda c: len(c.assigned))
            if len(child.assigned) >= 2 * self._threads:
                return
            key, item = self._pending.popleft()
            try:
                child.tasks.send((key, item))
            except OSError:  # BrokenPipeError (a test run saw it: tests/fuzz/test_pool.py)
                child.broken = True
                self._pending.appendleft((key, item))
                continue
            child.assigned[key] = item

    def get(self, timeout: float | None = None):
        """(key, value) of the next finished task; PoolError values are returned, not raised."""
        waited = 0.0
        while True:
            if self._lost:
                return self._lost.pop(0)
            ready = connection.wait([c.results for c in self._children], timeout=0.5)
            if not ready:
                waited += 0.5
                if timeout is not None and waited >= timeout:
                    raise TimeoutError(f"no result from the pool for {timeout:g} s")
                continue
            for n, child in enumerate(self._children):
                if child.results not in ready:
                    continue
                try:
                    key, value = child.results.recv()
                except (EOFError, OSError):
                    self._replace(n, child)
                    break
                child.assigned.pop(key, None)
                self._dispatch()
                return key, value

    def _replace(self, n: int, child: _Child) -> None:
        """A child that died (SIGSEGV in C, say): its tasks become PoolErrors, a new child
        takes its place, the run goes on."""
        child.process.join(5)
        self.deaths += 1
        code = child.process.exitcode
        for key in child.assigned:
            self._lost.append(
                (key, PoolError(f"the worker process running it died (exit code {code})"))
            )
        child.tasks.close()
        child.results.close()
        self._children[n] = self._spawn(n)
        self._dispatch()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for child in self._children:
            try:
                child.tasks.send(None)
            except OSError:
                pass
        for child in self._children:
            child.process.join(5)
            if child.process.is_alive():
                child.process.kill()
                child.process.join(1)
            child.tasks.close()
            child.results.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
