"""Real-time hygiene helpers: frozen GC collects only in slack; thread caps; RT requests.

Linux only (scheduler and affinity calls)."""

import errno
import gc
import os
import sys
import types
from collections.abc import Iterator

import pytest

from runtime.rt import GcPolicy, cap_threads, try_realtime

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@pytest.fixture(autouse=True)
def restore_process_state() -> Iterator[None]:
    """Every test here leaves the process as it found it: the thread-pool variables, torch's
    thread count, the scheduling policy and priority, and the CPU affinity."""
    env = {var: os.environ.get(var) for var in THREAD_VARS}
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    setscheduler, setaffinity = os.sched_setscheduler, os.sched_setaffinity  # not a test's fakes
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    cpus = os.sched_getaffinity(0)
    try:
        yield
    finally:
        for var, value in env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        if torch is not None and threads is not None:
            torch.set_num_threads(threads)
        setscheduler(0, policy, param)
        setaffinity(0, cpus)


def test_frozen_gc_disables_automatic_collection_and_collects_only_with_slack() -> None:
    was = gc.isenabled()
    policy = GcPolicy("frozen", slack_min_ns=100_000, gen0_threshold=10)
    policy.start()
    try:
        assert not gc.isenabled()
        assert gc.get_freeze_count() > 0
        junk = [[i] for i in range(100)]  # enough new container objects to pass the threshold
        assert not policy.collect_in_slack(50_000)  # too little slack: nothing runs
        assert policy.collect_in_slack(500_000)
        assert policy.collections == 1
        del junk
    finally:
        policy.stop()
    assert gc.isenabled() == was
    assert gc.get_freeze_count() == 0


def test_default_gc_policy_changes_nothing() -> None:
    was = gc.isenabled()
    policy = GcPolicy("default")
    policy.start()
    assert gc.isenabled() == was
    assert not policy.collect_in_slack(10**9)
    policy.stop()


class FakeTorch(types.ModuleType):
    def __init__(self) -> None:
        super().__init__("torch")
        self.threads: list[int] = []

    def set_num_threads(self, n: int) -> None:
        self.threads.append(n)


def test_cap_threads_sets_only_unset_pool_sizes_and_an_imported_torch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "4")  # a user's choice stays
    torch = FakeTorch()
    monkeypatch.setitem(sys.modules, "torch", torch)
    done = cap_threads(2)
    assert done == ["OMP_NUM_THREADS=2", "OPENBLAS_NUM_THREADS=2", "NUMEXPR_NUM_THREADS=2",
                    "torch.set_num_threads(2)"]
    assert [os.environ[v] for v in THREAD_VARS] == ["2", "4", "2", "2"]
    assert torch.threads == [2]
    with pytest.raises(ValueError, match="n=0"):
        cap_threads(0)


def test_cap_threads_never_imports_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` would raise
    assert cap_threads(1) == [f"{v}=1" for v in THREAD_VARS]


def test_realtime_requests_do_what_they_report() -> None:
    # Whether allowed or not on this machine, the answer is a line per request, never a crash,
    # and the process is in the state the line says.
    before = os.sched_getaffinity(0)
    pinned, fifo = try_realtime(priority=10, cpus={0})
    if pinned == "pinned to CPUs [0]":
        assert os.sched_getaffinity(0) == {0}
    else:
        assert pinned.startswith("CPU affinity [0] refused: ")
        assert os.sched_getaffinity(0) == before
    if fifo == "SCHED_FIFO priority 10":
        assert os.sched_getscheduler(0) == os.SCHED_FIFO
        assert os.sched_getparam(0).sched_priority == 10
    else:
        assert fifo.startswith("SCHED_FIFO priority 10 not allowed") or fifo.startswith(
            "SCHED_FIFO priority 10 refused: ")
        assert os.sched_getscheduler(0) != os.SCHED_FIFO


def test_refused_realtime_requests_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse_affinity(pid: int, cpus: object) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    def deny_fifo(pid: int, policy: int, param: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setaffinity", refuse_affinity)
    monkeypatch.setattr(os, "sched_setscheduler", deny_fifo)
    pinned, fifo = try_realtime(priority=20, cpus={3, 1})
    assert pinned == "CPU affinity [1, 3] refused: Invalid argument"
    assert fifo.startswith("SCHED_FIFO priority 20 not allowed (needs CAP_SYS_NICE")
    assert fifo.endswith("running with the default policy")
    assert try_realtime() == []  # nothing asked, nothing done
