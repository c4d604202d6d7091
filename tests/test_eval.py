"""Full-ranking metrics on hand-made rankings, and the ranking pass on a tiny model."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from hllm_jax.eval.metrics import cold_start_metrics, metrics_from_ranks, target_ranks
from hllm_jax.eval.ranking import seen_matrix

NEG = -np.inf


def _ranks(scores, targets):
    return np.asarray(target_ranks(jnp.asarray(scores, jnp.float32), jnp.asarray(targets)))


def test_ranks_plain_and_ties_count_against_the_target():
    s = [[NEG, 0.9, 0.5, 0.7, 0.1]]
    assert _ranks(s, [2]).tolist() == [3.0]          # 0.9, 0.7 ahead
    assert _ranks(s, [1]).tolist() == [1.0]
    ties = [[NEG, 0.5, 0.5, 0.5, 0.1]]
    assert _ranks(ties, [2]).tolist() == [3.0]       # both equal scores ahead (pessimistic)
    flat = [[NEG, 0.0, 0.0, 0.0, 0.0]]
    assert _ranks(flat, [4]).tolist() == [4.0]       # a constant model gets the worst rank


def test_target_in_history_is_never_retrieved_and_masked_items_never_ahead():
    s = [[NEG, NEG, 0.2, NEG, 0.1]]                  # items 1 and 3 masked (history)
    assert _ranks(s, [4]).tolist() == [2.0]
    r = _ranks(s, [3])                               # target masked too (it occurred before)
    assert np.isinf(r).all()
    m = metrics_from_ranks(r, ks=(5, 1000))
    assert m["recall@1000"] == 0.0 and m["ndcg@1000"] == 0.0


def test_metrics_by_hand_and_k_larger_than_catalogue():
    ranks = np.array([1.0, 3.0, 12.0, np.inf])
    m = metrics_from_ranks(ranks, ks=(1, 5, 10, 500))
    assert m["recall@1"] == 0.25 and m["recall@5"] == 0.5 and m["recall@10"] == 0.5
    assert m["recall@500"] == 0.75                   # K beyond a 100-item catalogue is fine
    assert m["ndcg@5"] == pytest.approx((1.0 + 1 / math.log2(4)) / 4)
    assert m["ndcg@500"] == pytest.approx((1.0 + 1 / math.log2(4) + 1 / math.log2(13)) / 4)
    assert math.isnan(metrics_from_ranks(np.array([]), ks=(5,))["recall@5"])


def test_cold_start_buckets():
    ranks = np.array([1.0, 50.0, 2.0, 7.0, 300.0])
    counts = np.array([0, 0, 3, 25, 100])
    out = cold_start_metrics(ranks, counts, ks=(5,))
    assert out["0"]["users"] == 2 and out["0"]["recall@5"] == 0.5
    assert out["1-4"]["users"] == 1 and out["1-4"]["recall@5"] == 1.0
    assert out["5-19"]["users"] == 0
    assert out["20+"]["users"] == 2 and out["20+"]["recall@5"] == 0.0


def test_seen_matrix():
    seq = np.array([5, 6, 7, 8, 9])
    m = seen_matrix(seq, np.array([0, 2, 4]), np.array([2, 4, 4]))
    assert m.tolist() == [[5, 6], [7, 8], [0, 0]]
