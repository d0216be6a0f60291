"""engine/clustering/graph.py and engine/evaluation/clustering.py: the kNN graph, connected components, Chinese whispers, the
unsorted group and the BCubed / pairwise scores (numpy and faiss, no Paddle)."""
import numpy as np
import pytest

from engine.clustering.graph import chinese_whispers, connected_components, drop_small, knn_edges
from engine.evaluation.clustering import UNSORTED, bcubed, pairwise_f


def people(n_people=20, per_person=10, dim=64, spread=0.25, seed=0):
    """Unit features around one random centre per person, and the truth."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_people, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(n_people), per_person)
    feats = centres[truth] + spread * rng.standard_normal((len(truth), dim)) / np.sqrt(dim)
    return (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32), truth


def test_knn_edges_are_each_pair_once_above_the_threshold_in_blocks():
    feats, truth = people()
    i, j, s = knn_edges(feats, k=8, threshold=0.5, block=7)  # blocks smaller than a person
    assert len(i) and np.all(i < j) and np.all(s >= 0.5)
    assert len(set(zip(i.tolist(), j.tolist()))) == len(i)
    assert np.allclose(s, np.sum(feats[i] * feats[j], axis=1), atol=1e-5)
    assert np.mean(truth[i] == truth[j]) > 0.99  # well-separated people: edges stay inside
    assert knn_edges(feats[:1])[0].size == 0


@pytest.mark.parametrize("method", ["components", "whispers"])
def test_well_separated_people_are_found_exactly(method):
    feats, truth = people()
    edges = knn_edges(feats, k=16, threshold=0.5)
    labels = connected_components(len(feats), edges) if method == "components" else \
        chinese_whispers(len(feats), edges, seed=0)
    assert bcubed(labels, truth) == pytest.approx((1.0, 1.0, 1.0))
    assert pairwise_f(labels, truth) == pytest.approx((1.0, 1.0, 1.0))
    assert labels[0] == 0 and len(set(labels.tolist())) == 20


def test_whispers_cut_a_bridge_that_chains_components():
    # two tight groups of 6, joined by one weak edge: components merge them, whispers do not
    i, j, w = [], [], []
    for base in (0, 6):
        for a in range(base, base + 6):
            for b in range(a + 1, base + 6):
                i.append(a), j.append(b), w.append(0.9)
    i.append(5), j.append(6), w.append(0.51)
    edges = (np.array(i), np.array(j), np.array(w, np.float32))
    truth = np.repeat([0, 1], 6)
    assert len(set(connected_components(12, edges).tolist())) == 1
    labels = chinese_whispers(12, edges, seed=3)
    assert bcubed(labels, truth)[2] == 1.0


def test_deterministic_for_the_same_seed_and_small_groups_unsorted():
    feats, truth = people(spread=0.9, seed=1)  # noisy: whispers' visiting order matters
    edges = knn_edges(feats, k=10, threshold=0.4)
    a = chinese_whispers(len(feats), edges, seed=7)
    assert np.array_equal(a, chinese_whispers(len(feats), edges, seed=7))
    kept = drop_small(np.array([0, 0, 1, 2, 2, 2, 3]), min_size=2)
    assert kept.tolist() == [0, 0, UNSORTED, 1, 1, 1, UNSORTED]


def test_bcubed_and_pairwise_by_hand():
    truth = np.array([0, 0, 0, 1, 1])
    labels = np.array([0, 0, 1, 1, 1])
    # BCubed precision: items 0,1 (2/2 each), items 2,3,4 in a cluster of 3 holding 1 and 2 alike
    p, r, f = bcubed(labels, truth)
    assert p == pytest.approx((1 + 1 + 1 / 3 + 2 / 3 + 2 / 3) / 5)
    assert r == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1 + 1) / 5)
    assert f == pytest.approx(2 * p * r / (p + r))
    assert pairwise_f(labels, truth)[:2] == pytest.approx((2 / 4, 2 / 4))
    # every face unsorted: perfect precision, recall of singletons
    p, r, _ = bcubed(np.full(5, UNSORTED), truth)
    assert p == 1.0 and r == pytest.approx((1 / 3 * 3 + 1 / 2 * 2) / 5)


def test_beyond_exact_up_to_an_ivf_index_finds_the_same_people():
    feats, truth = people(n_people=100, per_person=30, dim=64, spread=0.5, seed=2)
    exact = knn_edges(feats, k=16, threshold=0.5)
    approx = knn_edges(feats, k=16, threshold=0.5, exact_up_to=0)
    found = set(zip(approx[0].tolist(), approx[1].tolist()))
    assert found <= set(zip(exact[0].tolist(), exact[1].tolist())) and len(found) >= 0.95 * len(exact[0])
    labels = chinese_whispers(len(feats), approx, seed=0)
    assert bcubed(labels, truth)[2] > 0.99
    again = knn_edges(feats, k=16, threshold=0.5, exact_up_to=0)
    assert all(np.array_equal(a, b) for a, b in zip(approx, again))  # deterministic
