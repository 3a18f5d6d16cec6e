"""Real-time hygiene helpers: frozen GC collects only in slack; RT requests never crash."""

import gc
import os

import pytest

from runtime.rt import GcPolicy, cap_threads, try_realtime


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


def test_cap_threads_sets_unset_pool_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    done = cap_threads(1)
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS=1" in done
    with pytest.raises(ValueError, match="n=0"):
        cap_threads(0)


def test_realtime_requests_report_instead_of_raising() -> None:
    # Whether allowed or not on this machine, the answer is a line per request, never a crash.
    report = try_realtime(priority=10, cpus={0})
    assert len(report) == 2
    assert any("CPU" in line for line in report)
    assert any("SCHED_FIFO" in line for line in report)
    if any(line.startswith("SCHED_FIFO priority 10") and "not allowed" not in line
           for line in report):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))  # undo for later tests
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
