"""The stall judge (``fts_dist.runtime.stalls``): which rank has not moved for the timeout, by the watcher's clock,
and which one is behind; and the watchdog over a store, on one process."""

from __future__ import annotations

import pytest

from fts_dist.errors import FTSConfigError
from fts_dist.runtime.stalls import LocalStore, Progress, StallJudge, StallWatchdog, mark


def progress(**counts: int) -> dict[int, Progress]:
    return {int(rank[1:]): Progress(count, step=count // 4, where=f"mark {count}") for rank, count in counts.items()}


def test_a_rank_is_stalled_once_its_count_has_not_changed_for_the_timeout() -> None:
    judge = StallJudge(timeout=10)
    assert judge.observe(progress(r0=5, r1=5), now=0) == []
    assert judge.observe(progress(r0=9, r1=5), now=6) == []
    assert judge.observe(progress(r0=12, r1=5), now=10) == [1]  # rank 1 unchanged since 0
    assert judge.observe(progress(r0=12, r1=6), now=11) == []  # it moved: the clock starts again for it
    assert judge.observe(progress(r0=12, r1=6), now=16.5) == []  # rank 0 unchanged since 10: 6.5 s
    assert judge.observe(progress(r0=12, r1=6), now=20) == [0]


def test_the_report_names_the_rank_with_the_fewest_marks_and_ignores_finished_ranks() -> None:
    judge = StallJudge(timeout=10)
    seen = progress(r0=18, r1=16, r2=18)
    judge.observe(seen, now=0)
    report = judge.report(seen, now=12)
    assert (
        report.splitlines()[0]
        == "fts_dist: stall: no progress for 10 s; rank(s) [1] behind (last at step 4, phase 0, mark 16)"
    )
    assert "rank 2: step 4, phase 0, mark 18 (18 marks, no change for 12 s)" in report
    finished = {**seen, 1: Progress(40, 10, 2, "done", done=True)}
    assert judge.observe(finished, now=30) == [0, 2]  # a rank that is done never stalls
    assert "rank(s) [0, 2] behind" in judge.report(finished, now=30)


def test_the_watchdog_publishes_marks_to_the_store_and_stops_as_done() -> None:
    store = LocalStore()
    watchdog = StallWatchdog(store, rank=0, world_size=1, timeout=60)
    watchdog.start()
    mark("in a training step", step=3, phase=1)
    watchdog._publish()
    assert watchdog._read()[0].describe() == "step 3, phase 1, in a training step"
    watchdog.stop()
    assert watchdog._read()[0].done
    mark("after the fit")  # no watchdog: a no-op
    assert watchdog._read()[0].where == "done"


@pytest.mark.parametrize("value", [0, -1, "10", True])
def test_a_stall_timeout_must_be_a_positive_number(value: object) -> None:
    from fts_dist import FinetuningScheduler

    with pytest.raises(FTSConfigError, match="`stall_timeout` must be a positive number of seconds"):
        FinetuningScheduler(stall_timeout=value)  # type: ignore[arg-type]
