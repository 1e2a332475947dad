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


def test_a_cached_ranking_gives_back_every_score_and_component_to_the_bit():
    """The cached entry keeps the components, not the score (24 bytes): read back, the
    score recomputed from them equals the ranking's exactly, and so do the components."""
    import numpy as np

    from cache import ranked_feed as rf

    rng = np.random.default_rng(3)
    n = 400
    rows = [row(i, int(rng.integers(1, 40)), int(rng.choice([0, 0, 5, 6])),
                float(rng.uniform(0, 500)), float(rng.integers(0, 101)) / 2,
                bool(rng.integers(0, 2)), float(rng.choice([0, 10, 20, 70])))
            for i in range(1, n + 1)]
    viewer = scoring.ViewerInputs(fellows=frozenset({2, 7, 11}), collectives=frozenset({5}),
                                  by_author={2: 3, 3: 20, 9: 1})
    weights = {"recency": 0.15, "social": 0.25, "interaction": 0.2, "engagement": 0.15,
               "collective": 0.15, "post_type": 0.1}
    ranked = scoring.rank(scoring.Candidates.from_rows(rows), viewer, weights, NOW_US)
    records = rf.pack(ranked.ids, ranked.components, ranked.viewed)
    assert rf.RECORD.itemsize == 24
    read = rf.entries(np.frombuffer(records.tobytes(), dtype=rf.RECORD),
                      lambda parts, viewed: scoring.scores(parts, viewed, weights))
    assert [e.id for e in read] == ranked.ids.tolist()
    assert [e.score for e in read] == ranked.scores.tolist()
    assert [list(e.components) for e in read] == ranked.components.tolist()
    assert [e.viewed for e in read] == ranked.viewed.tolist()
