"""engine.evaluation.metrics: hand-computed cases and cross-checks against scikit-learn. No Paddle."""
import json

import numpy as np
import pytest

from engine.evaluation import metrics as M

sklearn_metrics = pytest.importorskip("sklearn.metrics")
sklearn_model_selection = pytest.importorskip("sklearn.model_selection")


def test_l2_normalize_unit_rows_and_zero_row_stays_zero():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    y = M.l2_normalize(x)
    np.testing.assert_allclose(y, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    assert not np.isnan(y).any()


def test_pair_scores_cosine_and_squared_distance_agree():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 16)), rng.normal(size=(50, 16))
    cos, dist = M.pair_scores(a, b)
    np.testing.assert_allclose(dist, 2 - 2 * cos, atol=1e-12)
    # scale does not matter: features are normalised first
    cos2, _ = M.pair_scores(a * 7.0, b * 0.1)
    np.testing.assert_allclose(cos, cos2, atol=1e-12)
    assert np.all((dist >= 0) & (dist <= 4 + 1e-12))


def test_thresholds_are_insightface_grid():
    assert len(M.THRESHOLDS) == 400
    assert M.THRESHOLDS[0] == 0.0 and abs(M.THRESHOLDS[-1] - 3.99) < 1e-9


@pytest.mark.parametrize("n,folds", [(20, 10), (23, 10), (6000, 10), (7, 3), (10, 10)])
def test_kfold_splits_match_sklearn_kfold_without_shuffle(n, folds):
    ours = M.kfold_splits(n, folds)
    theirs = list(sklearn_model_selection.KFold(n_splits=folds, shuffle=False).split(np.arange(n)))
    assert len(ours) == len(theirs) == folds
    for (tr, te), (tr2, te2) in zip(ours, theirs):
        np.testing.assert_array_equal(tr, tr2)
        np.testing.assert_array_equal(te, te2)


def test_kfold_rejects_fewer_pairs_than_folds():
    with pytest.raises(ValueError, match="at least 10 pairs"):
        M.kfold_splits(9, 10)


def test_accuracy_threshold_is_chosen_on_the_other_folds_only():
    # Fold 1 = the two "same" pairs, fold 2 = the two "different" pairs (2 folds, file order).
    # Fold 1 is scored with the threshold learnt on fold 2 (all different -> threshold 0.00,
    # which calls everything "different"): 0 of 2 right. Fold 2 is scored with the threshold
    # learnt on fold 1 (distances 0.5 -> first threshold above it, 0.51): 2 of 2 right.
    dist = np.array([0.5, 0.5, 3.0, 3.0])
    labels = np.array([1, 1, 0, 0])
    r = M.verification_accuracy(dist, labels, folds=2)
    assert r["fold_accuracies"] == [0.0, 1.0]
    assert r["fold_thresholds"][0] == 0.0
    assert abs(r["fold_thresholds"][1] - 0.51) < 1e-9
    assert r["acc"] == 0.5 and r["acc_std"] == 0.5
    assert abs(r["best_threshold"] - 0.255) < 1e-9


def test_accuracy_perfectly_separable_pairs():
    dist = np.r_[np.full(10, 0.4), np.full(10, 2.0)]
    labels = np.r_[np.ones(10), np.zeros(10)]
    order = np.random.default_rng(1).permutation(20)
    r = M.verification_accuracy(dist[order], labels[order], folds=10)
    assert r["acc"] == 1.0 and r["acc_std"] == 0.0
    # lowest threshold that accepts 0.4 and rejects 2.0: 0.41
    assert all(abs(t - 0.41) < 1e-9 for t in r["fold_thresholds"])


def test_accuracy_strict_less_than_threshold():
    # a distance equal to a grid threshold is "different" at that threshold (dist < thr)
    dist = np.array([1.0, 1.0, 1.0, 1.0])
    r = M.verification_accuracy(dist, [1, 1, 1, 1], folds=2, thresholds=np.array([1.0, 1.5]))
    assert r["fold_thresholds"] == [1.5, 1.5]


def _insightface_style_accuracy(dist, same, folds):
    """Independent loop version of the protocol, with sklearn's KFold (as insightface uses)."""
    thresholds = np.arange(0, 4, 0.01)
    accs, thrs = [], []
    for train, test in sklearn_model_selection.KFold(n_splits=folds, shuffle=False).split(dist):
        train_acc = []
        for t in thresholds:
            pred = dist[train] < t
            train_acc.append(np.mean(pred == same[train]))
        best = thresholds[int(np.argmax(train_acc))]
        thrs.append(best)
        accs.append(np.mean((dist[test] < best) == same[test]))
    return np.mean(accs), np.std(accs), np.mean(thrs)


@pytest.mark.parametrize("n", [200, 237])
def test_accuracy_matches_independent_loop_implementation(n):
    rng = np.random.default_rng(n)
    same = rng.random(n) < 0.5
    base = rng.normal(size=(n, 32))
    other = np.where(same[:, None], base + rng.normal(scale=0.9, size=(n, 32)), rng.normal(size=(n, 32)))
    cos, dist = M.pair_scores(base, other)
    r = M.verification_accuracy(dist, same, folds=10)
    acc, std, thr = _insightface_style_accuracy(dist, same, 10)
    assert abs(r["acc"] - acc) < 1e-12
    assert abs(r["acc_std"] - std) < 1e-12
    assert abs(r["best_threshold"] - thr) < 1e-12
    assert 0.6 < r["acc"] < 1.0  # the case is neither trivial nor chance


def test_roc_matches_sklearn_including_ties():
    rng = np.random.default_rng(3)
    labels = rng.random(300) < 0.4
    scores = np.round(rng.normal(size=300) + labels * 1.2, 1)  # rounding creates many ties
    fpr, tpr, thr = M.roc_curve_points(scores, labels)
    fpr2, tpr2, thr2 = sklearn_metrics.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, fpr2)
    np.testing.assert_allclose(tpr, tpr2)
    np.testing.assert_allclose(thr[1:], thr2[1:])
    assert np.isinf(thr[0])
    assert abs(M.roc_auc(fpr, tpr) - sklearn_metrics.roc_auc_score(labels, scores)) < 1e-12


def test_roc_auc_hand_cases():
    fpr, tpr, _ = M.roc_curve_points([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0])
    assert M.roc_auc(fpr, tpr) == 1.0
    fpr, tpr, _ = M.roc_curve_points([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1])
    assert M.roc_auc(fpr, tpr) == 0.0
    fpr, tpr, _ = M.roc_curve_points([0.5, 0.5], [1, 0])  # one tie: the diagonal
    assert M.roc_auc(fpr, tpr) == 0.5


def test_roc_needs_both_classes():
    with pytest.raises(ValueError, match="both same and different"):
        M.roc_curve_points([0.1, 0.2], [1, 1])


def test_eer_exact_point():
    # scores 6..1, labels 1,1,0,1,0,0: at threshold 4, FAR = 1/3 and FRR = 1/3
    fpr, tpr, thr = M.roc_curve_points([6, 5, 4, 3, 2, 1], [1, 1, 0, 1, 0, 0])
    eer, t = M.equal_error_rate(fpr, tpr, thr)
    assert abs(eer - 1 / 3) < 1e-12 and t == 4.0


def test_eer_interpolated_between_points():
    # scores 5..1, labels 1,0,1,1,0: threshold 4 -> FAR .5 FRR 2/3; threshold 3 -> FAR .5 FRR 1/3
    fpr, tpr, thr = M.roc_curve_points([5, 4, 3, 2, 1], [1, 0, 1, 1, 0])
    eer, t = M.equal_error_rate(fpr, tpr, thr)
    assert abs(eer - 0.5) < 1e-12 and abs(t - 3.5) < 1e-12


def test_eer_separable_is_zero():
    fpr, tpr, thr = M.roc_curve_points([0.9, 0.8, 0.1], [1, 1, 0])
    assert M.equal_error_rate(fpr, tpr, thr)[0] == 0.0


def test_eer_close_to_brute_force_sweep():
    rng = np.random.default_rng(5)
    labels = rng.random(2000) < 0.5
    scores = rng.normal(size=2000) + labels * 1.5
    fpr, tpr, thr = M.roc_curve_points(scores, labels)
    eer, _ = M.equal_error_rate(fpr, tpr, thr)
    sweep = np.linspace(scores.min(), scores.max(), 5001)
    far = np.array([np.mean(scores[~labels] >= t) for t in sweep])
    frr = np.array([np.mean(scores[labels] < t) for t in sweep])
    i = np.argmin(np.abs(far - frr))
    assert abs(eer - (far[i] + frr[i]) / 2) < 0.005


def test_tar_at_far_hand_case_and_too_few_negatives():
    pos = [0.9, 0.8, 0.3]
    neg = [0.85, 0.5, 0.19, 0.18, 0.17, 0.16, 0.15, 0.14, 0.13, 0.12]  # 10 negatives
    scores = np.array(pos + neg)
    labels = np.array([1] * 3 + [0] * 10)
    fpr, tpr, thr = M.roc_curve_points(scores, labels)
    r = M.tar_at_far(fpr, tpr, thr, num_negatives=10, far_targets=(1e-1, 1e-2))
    # FAR <= 0.1 allows one false accept (0.85); 0.5 would be a second: accept down to 0.8 -> TAR 2/3
    assert abs(r["1e-1"]["tar"] - 2 / 3) < 1e-12
    assert r["1e-1"]["far"] == 0.1 and r["1e-1"]["threshold"] == 0.8
    assert r["1e-2"]["tar"] is None
    assert "at least 100 negative pairs" in r["1e-2"]["note"] and "has 10" in r["1e-2"]["note"]


def test_min_negatives_and_keys():
    assert M.min_negatives_for_far(1e-3) == 1000
    assert M.min_negatives_for_far(1e-1) == 10
    assert [M.far_key(f) for f in (1e-1, 1e-2, 1e-3)] == ["1e-1", "1e-2", "1e-3"]


def test_tar_at_far_cross_check_against_sklearn_roc():
    rng = np.random.default_rng(7)
    labels = rng.random(3000) < 0.3
    scores = rng.normal(size=3000) + labels * 2.0
    fpr, tpr, thr = M.roc_curve_points(scores, labels)
    r = M.tar_at_far(fpr, tpr, thr, int((~labels).sum()))
    f2, t2, _ = sklearn_metrics.roc_curve(labels, scores)
    for far in (1e-1, 1e-2, 1e-3):
        assert abs(r[M.far_key(far)]["tar"] - t2[f2 <= far].max()) < 1e-12
    # the achieved threshold really gives that FAR and TAR
    thr_1 = r["1e-2"]["threshold"]
    assert np.mean(scores[~labels] >= thr_1) <= 1e-2
    assert abs(np.mean(scores[labels] >= thr_1) - r["1e-2"]["tar"]) < 1e-12


def test_verification_metrics_full_dict_is_json_and_consistent():
    rng = np.random.default_rng(11)
    n = 1200
    same = np.arange(n) % 2 == 0
    a = rng.normal(size=(n, 8))
    b = np.where(same[:, None], a + rng.normal(scale=0.7, size=(n, 8)), rng.normal(size=(n, 8)))
    m = M.verification_metrics(a, b, same.astype(int), folds=10, flip=True)
    json.dumps(m)  # plain Python types only
    for key in ("acc", "acc_std", "best_threshold", "best_threshold_cosine", "tar_at_far", "roc_auc",
                "eer", "num_pairs", "folds", "protocol", "fold_accuracies", "notes"):
        assert key in m, key
    assert m["num_pairs"] == n and m["num_negative_pairs"] == 600 and m["folds"] == 10
    assert abs(m["best_threshold_cosine"] - (1 - m["best_threshold"] / 2)) < 1e-12
    assert m["tar_at_far"]["1e-1"] is not None and m["tar_at_far"]["1e-2"] is not None
    assert m["tar_at_far"]["1e-3"] is None  # 600 negatives < 1000
    assert any("1e-3" in note and "1000" in note for note in m["notes"])
    assert m["protocol"]["flip"] is True and m["protocol"]["folds"] == 10
    cos, _ = M.pair_scores(a, b)
    assert abs(m["roc_auc"] - sklearn_metrics.roc_auc_score(same, cos)) < 1e-12
    assert "10-fold, flip-sum, threshold chosen on 9 folds" in M.protocol_summary(m)


def test_verification_metrics_single_class_reports_why_roc_is_missing():
    a = np.eye(10)
    m = M.verification_metrics(a, a, np.ones(10), folds=10)
    assert m["acc"] == 1.0 and m["roc_auc"] is None and m["eer"] is None
    assert m["tar_at_far"]["1e-1"] is None and "both same and different" in m["notes"][0]


def test_bad_labels_rejected():
    with pytest.raises(ValueError, match="0/1"):
        M.verification_accuracy(np.zeros(10), np.full(10, 2), folds=2)
    with pytest.raises(ValueError, match="labels for"):
        M.verification_accuracy(np.zeros(10), np.zeros(9), folds=2)
