"""The monitor's open windows in memory: merging counted batches, late rows, snapshots for the commit,
and partitions taken over or given away. No server: the windows are written by the core."""

from __future__ import annotations

import numpy as np

from services.monitor.counting import CountedBatch, WindowDelta
from services.monitor.settings import MonitorSettings
from services.monitor.windows import OpenWindow, OpenWindows

SHA = "f" * 64
TRACE = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"


class _Reference:
    """What merging reads of a version's training profile: an empty count vector and its sha256."""

    sha256 = SHA

    @staticmethod
    def empty() -> np.ndarray:
        return np.zeros(3, dtype=np.int64)


def _windows(**settings) -> OpenWindows:
    return OpenWindows(database=None, settings=MonitorSettings(metrics_port=None, **settings))


def _counted(
    *deltas: WindowDelta, partition: int = 0, traceparent: str | None = None, latest: float = 0.0
) -> CountedBatch:
    return CountedBatch(
        windows=list(deltas),
        rows=sum(d.samples for d in deltas),
        partition=partition,
        traceparent=traceparent,
        model="m",
        window_seconds=10,
        references={1: _Reference(), 2: None},
        latest=latest,
    )


def _delta(start: int, samples: int, *, version: int = 1) -> WindowDelta:
    counts = np.full(3, samples, dtype=np.int64) if version == 1 else None
    return WindowDelta("m", version, start, counts, samples)


def test_merged_batches_add_up_in_their_window_with_distinct_links_up_to_the_bound():
    windows = _windows(max_links_per_window=2)
    windows.merge(_counted(_delta(100, 4), traceparent=TRACE, latest=105.0))
    windows.merge(_counted(_delta(100, 6), _delta(110, 1), traceparent=TRACE, latest=111.0))
    other = "00-" + "12" * 16 + "-" + "34" * 8 + "-01"
    third = "00-" + "56" * 16 + "-" + "78" * 8 + "-01"
    windows.merge(_counted(_delta(100, 1), traceparent=other, latest=103.0))
    windows.merge(_counted(_delta(100, 1), traceparent=third))
    first = windows.windows[("m", 1, 100)]
    assert first.samples == 12 and first.counts.tolist() == [12, 12, 12]
    assert first.width == 10 and first.end == 110 and first.profile_sha256 == SHA
    assert first.links == [TRACE, other]  # the same trace once; none past the bound
    assert windows.windows[("m", 1, 110)].samples == 1
    assert windows.watermarks == {0: 111.0}  # the latest request time read, never moved back


def test_a_version_without_a_profile_gets_a_window_of_samples_only():
    windows = _windows()
    windows.merge(_counted(_delta(100, 5, version=2)))
    window = windows.windows[("m", 2, 100)]
    assert window.counts is None and window.samples == 5 and window.profile_sha256 == ""


def test_rows_of_a_closed_window_are_late_not_counted_and_the_next_snapshot_carries_them():
    windows = _windows()
    windows.closed[("m", 1)] = 100
    windows.merge(_counted(_delta(90, 2), _delta(100, 3), _delta(110, 4)))
    assert list(windows.windows) == [("m", 1, 110)]
    assert windows.late == {("m", 1, 90): 2, ("m", 1, 100): 3}
    plan = windows.snapshot(now=111.0)
    assert plan.late == {("m", 1, 90): 2, ("m", 1, 100): 3}
    assert windows.late == {} and windows.snapshot(now=111.0).late == {}


def test_a_snapshot_copies_the_changed_windows_takes_out_the_due_ones_and_starts_afresh():
    windows = _windows(window_grace_ms=0)
    windows.caught_up[0] = True
    windows.offsets[("t", 0)] = 42
    windows.merge(_counted(_delta(100, 2), _delta(110, 3)))
    plan = windows.snapshot(now=115.0)
    assert [(w.start, w.samples) for w in plan.closing] == [(100, 2)]
    assert [(w.start, w.samples) for w in plan.windows] == [(110, 3)]
    assert list(windows.windows) == [("m", 1, 110)] and windows.closed[("m", 1)] == 100
    assert plan.offsets == {("t", 0): 42}
    # What is merged after the snapshot goes to the next commit; the plan's copy stays as taken.
    windows.merge(_counted(_delta(110, 1)))
    windows.offsets[("t", 0)] = 43
    assert plan.windows[0].samples == 3 and plan.windows[0].counts.tolist() == [3, 3, 3]
    assert plan.offsets == {("t", 0): 42}
    again = windows.snapshot(now=115.0)
    assert [(w.start, w.samples) for w in again.windows] == [(110, 4)]
    assert windows.snapshot(now=115.0).windows == []  # nothing changed since


def test_a_window_is_not_due_until_its_partition_is_read_past_its_end_and_grace():
    windows = _windows(window_grace_ms=500)
    windows.merge(_counted(_delta(100, 1), partition=3, latest=100.5))
    assert windows.due(200.0) == []  # its partition's backlog not read yet
    windows.merge(_counted(partition=3, latest=110.4))
    assert windows.due(200.0) == []  # a later row, but within the grace
    windows.merge(_counted(partition=3, latest=110.5))
    assert [w.start for w in windows.due(200.0)] == [100]
    assert windows.due(110.4) == []  # the clock within the grace


def test_releasing_a_partition_forgets_only_its_state():
    windows = _windows()
    windows.partitions.update({0, 1})
    for partition in (0, 1):
        windows.merge(_counted(_delta(100 + partition * 10, 1), partition=partition, latest=100.0))
        windows.offsets[("t", partition)] = 7
        windows.caught_up[partition] = True
    windows.release("t", [1])
    assert windows.partitions == {0}
    assert list(windows.windows) == [("m", 1, 100)]
    assert windows.offsets == {("t", 0): 7} and windows.caught_up == {0: True}
    assert list(windows.watermarks) == [0]


def test_restored_state_resumes_where_the_last_commit_left_off():
    windows = _windows()
    stored = OpenWindow("m", 1, 100, 10, 4, np.ones(3, np.int64), SHA, 9, [TRACE], False)
    windows.restore("t", windows=[stored], closed={("m", 1): 90}, offsets={4: 1234})
    assert windows.windows == {("m", 1, 100): stored} and windows.offsets == {("t", 4): 1234}
    windows.merge(_counted(_delta(90, 1), _delta(100, 1), partition=4))
    assert stored.samples == 10 and stored.dirty and windows.late == {("m", 1, 90): 1}


def test_staging_without_predictions_opens_no_transaction():
    windows = _windows()
    windows.merge(_counted(_delta(100, 1)))
    windows.stage()
    assert windows.staging is None
