"""kvmtest.pool: results by key, a task's exception comes back, a crashed child is replaced."""

import os

from kvmtest.pool import Pool, PoolError


def _work(x):
    if x == 5:  # the process dies at once, as in a crash in C (pytest's faulthandler
        os._exit(139)  # would survive a plain SIGSEGV sent by kill)
    if x == 6:
        raise ValueError("six")
    return x * 2


def test_a_crash_costs_only_its_own_tasks():
    with Pool(_work, 2, 2) as pool:
        for i in range(30):
            pool.submit(i, i)
        got = dict(pool.get(timeout=30) for _ in range(30))
        assert pool.deaths == 1
    assert isinstance(got[5], PoolError) and "died" in str(got[5])
    assert isinstance(got[6], PoolError) and "six" in str(got[6])
    fine = {k: v for k, v in got.items() if not isinstance(v, PoolError)}
    assert all(v == 2 * k for k, v in fine.items()) and len(fine) >= 20


def test_a_task_sent_to_a_child_that_just_died_goes_to_another():
    """The child dies between two sends: the second finds the pipe broken and the task is
    run elsewhere, not lost and not a crash of the parent (seen once under load)."""
    with Pool(_work, 2, 1) as pool:
        pool.submit(5, 5)  # kills child 0 (the least loaded first)
        doomed = pool._children[0]
        doomed.process.join(10)
        assert not doomed.process.is_alive()
        for i in range(10, 14):
            pool.submit(i, i)  # child 0's pipe is broken now
        got = dict(pool.get(timeout=30) for _ in range(5))
    assert isinstance(got[5], PoolError) and "died" in str(got[5])
    assert {k: got[k] for k in range(10, 14)} == {k: 2 * k for k in range(10, 14)}
