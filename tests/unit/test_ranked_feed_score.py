"""The personalized feed's score (API.md section 4) as pure functions, no servers: candidate
rows as the candidate query returns them (a post found by two sources comes twice) and
the ranking over them."""

from __future__ import annotations

import pytest

from service import ranked_feed_score as scoring

NOW_US = 1_800_000_000_000_000
HOUR_US = 3_600_000_000


def row(post_id: int, author: int, collective: int = 0, hours: float = 1.0,
        engagement: float = 0.0, viewed: bool = False, post_type: float = 0.0) -> tuple:
    return (post_id, author, collective, NOW_US - int(hours * HOUR_US), engagement, viewed,
            post_type)


def test_a_post_found_by_several_sources_is_one_candidate():
    # Post 7 is recent, by a fellow and in a joined collective: three sources return it.
    rows = [row(7, 2, 5, 3.0, 4.5, True, 20.0), row(9, 3), row(7, 2, 5, 3.0, 4.5, True, 20.0),
            row(8, 2), row(7, 2, 5, 3.0, 4.5, True, 20.0)]
    candidates = scoring.Candidates.from_rows(rows)
    assert candidates.ids.tolist() == [7, 8, 9]
    assert candidates.collective_ids.tolist() == [5, 0, 0]
    assert candidates.engagement.tolist() == [4.5, 0.0, 0.0]
    assert candidates.viewed.tolist() == [True, False, False]
    assert candidates.post_type.tolist() == [20.0, 0.0, 0.0]
    viewer = scoring.ViewerInputs(fellows=frozenset({2}), collectives=frozenset({5}))
    ranked = scoring.rank(candidates, viewer, dict.fromkeys(scoring.COMPONENTS, 1.0), NOW_US)
    assert sorted(ranked.ids.tolist()) == [7, 8, 9]


def test_no_candidates():
    candidates = scoring.Candidates.from_rows([])
    assert len(candidates) == 0
    ranked = scoring.rank(candidates, scoring.ViewerInputs(),
                          dict.fromkeys(scoring.COMPONENTS, 1.0), NOW_US)
    assert len(ranked) == 0


def test_score_is_the_weighted_sum_of_the_components():
    weights = {"recency": 0.15, "social": 0.25, "interaction": 0.20, "engagement": 0.15,
               "collective": 0.15, "post_type": 0.10}
    candidates = scoring.Candidates.from_rows([row(1, 2, 5, 24.0, 12.0, False, 30.0),
                                               row(2, 3, 0, 0.0, 0.0, True, 0.0)])
    viewer = scoring.ViewerInputs(fellows=frozenset({2}), collectives=frozenset({5}),
                                  by_author={2: 3, 3: 20})
    ranked = scoring.rank(candidates, viewer, weights, NOW_US)
    by_id = dict(zip(ranked.ids.tolist(), ranked.scores.tolist(), strict=True))
    recency_1 = 100.0 * 2.718281828459045 ** -1.0
    assert by_id[1] == pytest.approx(0.15 * recency_1 + 0.25 * 50 + 0.20 * 15 + 0.15 * 12
                                     + 0.15 * 30 + 0.10 * 30, rel=1e-12)
    assert by_id[2] == pytest.approx((0.15 * 100 + 0.20 * 40) * scoring.VIEWED_FACTOR,
                                     rel=1e-12)


def test_packed_candidates_read_as_the_rows_they_pack():
    """The candidate query's one bytea (``CANDIDATE_ROW``, big-endian) gives the same
    candidates as its rows would, a post found twice kept once."""
    import numpy as np

    from storage.ranked_feed import CANDIDATE_ROW

    rows = [row(7, 2, 5, 3.0, 4.5, True, 20.0), row(9, 3, 0, 1.5, 50.0, False, 10.0),
            row(7, 2, 5, 3.0, 4.5, True, 20.0)]
    packed = np.array(rows, dtype=CANDIDATE_ROW).tobytes()
    assert len(packed) == 49 * len(rows)
    got = scoring.Candidates.from_records(np.frombuffer(packed, dtype=CANDIDATE_ROW))
    want = scoring.Candidates.from_rows(rows)
    for name in ("ids", "author_ids", "collective_ids", "created_us", "engagement", "viewed",
                 "post_type"):
        assert getattr(got, name).tolist() == getattr(want, name).tolist(), name
    assert got.ids.tolist() == [7, 9] and got.viewed.tolist() == [True, False]
