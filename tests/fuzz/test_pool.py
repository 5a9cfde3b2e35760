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
