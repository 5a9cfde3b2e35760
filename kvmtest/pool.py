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

import multiprocessing
import os
import queue
import threading


class PoolError(Exception):
    """A task raised, or a worker process died."""


def default_processes(jobs: int) -> int:
    """Processes for `jobs` concurrent traces: one per core, each with jobs / processes threads;
    a single process for small jobs (forking costs more than it saves)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if jobs < 4:
        return 1
    return max(1, min(cores or 1, jobs // 2))


def _child(function, threads: int, tasks, results) -> None:
    def loop() -> None:
        while True:
            task = tasks.get()
            if task is None:
                return
            key, item = task
            try:
                value = function(item)
            except BaseException as exc:  # handed to the parent
                value = PoolError(f"{type(exc).__name__}: {exc}")
            results.put((key, value))

    workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.close()
    results.join_thread()


class Pool:
    def __init__(self, function, processes: int, threads: int):
        context = multiprocessing.get_context("fork")
        self._tasks = context.Queue()
        self._results = context.Queue()
        self._threads = max(1, threads)
        self._processes = [
            context.Process(
                target=_child,
                args=(function, self._threads, self._tasks, self._results),
                daemon=True,
                name=f"kvmtest-pool-{n}",
            )
            for n in range(max(1, processes))
        ]
        for process in self._processes:
            process.start()
        self._closed = False

    def submit(self, key, item) -> None:
        self._tasks.put((key, item))

    def get(self, timeout: float | None = None):
        """(key, value) of the next finished task; PoolError values are returned, not raised."""
        waited = 0.0
        while True:
            try:
                return self._results.get(timeout=0.5)
            except queue.Empty:
                waited += 0.5
                dead = [p for p in self._processes if p.exitcode not in (None, 0)]
                if dead:
                    raise PoolError(
                        f"worker process {dead[0].name} died (exit code {dead[0].exitcode})"
                    ) from None
                if timeout is not None and waited >= timeout:
                    raise TimeoutError(f"no result from the pool for {timeout:g} s") from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for _ in range(len(self._processes) * self._threads):
            self._tasks.put(None)
        for process in self._processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(1)
        self._tasks.close()
        self._results.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
