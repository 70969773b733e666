"""Near-duplicates by backbone features: the pair search, and evaluate's warning."""

from __future__ import annotations

import numpy as np
import pytest

from autocls.neardup import near_duplicates


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("block", [1, 3, 1024])
def test_pairs_within_one_set_are_found_once_most_similar_first(block: int) -> None:
    rng = np.random.default_rng(0)
    base = unit(rng.normal(size=(20, 64)))  # random directions: similarities near 0
    features = np.concatenate([base, unit(base[[4, 9]] + 0.01 * rng.normal(size=(2, 64))), base[[9]]])
    pairs = near_duplicates(features, threshold=0.97, block=block)
    assert {(p.first, p.second) for p in pairs} == {(4, 20), (9, 21), (9, 22), (21, 22)}
    similarities = [p.similarity for p in pairs]
    assert similarities == sorted(similarities, reverse=True) and similarities[0] == pytest.approx(1.0, abs=1e-6)


def test_pairs_between_two_sets_name_a_row_of_each() -> None:
    rng = np.random.default_rng(1)
    train = unit(rng.normal(size=(30, 32)))
    evaluated = np.concatenate([unit(rng.normal(size=(5, 32))), train[[7]]])
    pairs = near_duplicates(evaluated, train, block=2)
    assert [(p.first, p.second) for p in pairs] == [(5, 7)]
    assert near_duplicates(evaluated, train, threshold=1.01) == []
