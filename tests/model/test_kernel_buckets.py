"""Row buckets of the per-row-count kernel choice (no model)."""

from __future__ import annotations

from server.model.cpu_kernels import ROW_BUCKETS, bucket


def test_a_row_count_rounds_up_to_its_bucket() -> None:
    got = {rows: ROW_BUCKETS[bucket(rows)] for rows in (1, 2, 3, 4, 5, 8, 9, 200, 256)}
    assert got == {1: 1, 2: 2, 3: 4, 4: 4, 5: 8, 8: 8, 9: 16, 200: 256, 256: 256}
    assert ROW_BUCKETS[bucket(10_000)] == ROW_BUCKETS[-1]
