"""Backbones (sizes, shapes), the ArcFace head, FaceRecModel and loading weights by name."""
import math

import numpy as np
import pytest

from foundation.runtime import set_threads

set_threads(2)
paddle = pytest.importorskip("paddle")

from foundation.errors import ConfigError, UserError  # noqa: E402
from models import (  # noqa: E402
    ArcMargin,
    FaceRecModel,
    build_backbone,
    count_multiply_adds,
    count_parameters,
    load_backbone_weights,
    load_weights_by_name,
)

# Exact sizes of our implementations (conv + BN + PReLU weights; BN running stats are buffers).
MOBILEFACENET_PARAMS = 1_022_720
RESNET50_FACE_PARAMS = 24_610_240


@pytest.fixture(scope="module")
def mobilefacenet():
    paddle.seed(0)
    model = build_backbone("MobileFaceNet")
    model.eval()
    return model


def test_mobilefacenet_size_and_cost(mobilefacenet):
    n = count_parameters(mobilefacenet)
    assert n == MOBILEFACENET_PARAMS
    assert 0.99e6 <= n <= 1.06e6  # the paper's "about 1.0 M"
    madds = count_multiply_adds(mobilefacenet)
    assert 0.21e9 <= madds <= 0.23e9  # "about 0.22 G multiply-adds" at 112x112
    assert mobilefacenet.embedding_size == 128


def test_resnet50_face_size_and_shape():
    model = build_backbone("ResNet50_face")
    n = count_parameters(model)
    assert n == RESNET50_FACE_PARAMS
    assert 24.4e6 <= n <= 24.8e6  # "about 24.6 M"
    fc = model.fc.weight
    assert list(fc.shape) == [2048, 512]
    model.eval()
    with paddle.no_grad():
        out = model(paddle.rand([1, 3, 112, 112]) * 2 - 1)
    assert list(out.shape) == [1, 512]
    assert model.embedding_size == 512


def test_output_shapes_and_total_stride(mobilefacenet):
    x = paddle.rand([3, 3, 112, 112]) * 2 - 1
    with paddle.no_grad():
        out = mobilefacenet(x)
        # the last map before the global depthwise conv is 7x7 (total stride 16)
        m = mobilefacenet
        h = m.conv2(m.blocks(m.dw_conv1(m.conv1(x))))
    assert list(out.shape) == [3, 128]
    assert list(h.shape) == [3, 512, 7, 7]
    assert out.dtype == paddle.float32
    assert np.isfinite(out.numpy()).all()


def test_paddleclas_parameter_names(mobilefacenet):
    """Names follow PaddleClas so its checkpoints load by name."""
    keys = set(mobilefacenet.state_dict())
    for k in ("conv1.conv.weight", "conv1.prelu._weight", "dw_conv1.conv.weight", "blocks.0.conv.0.weight",
              "blocks.0.conv.3.weight", "blocks.14.conv.7._variance", "conv2.bn._mean", "linear7.conv.weight",
              "linear1.bn.bias"):
        assert k in keys, k
    assert list(mobilefacenet.state_dict()["linear7.conv.weight"].shape) == [512, 1, 7, 7]
    resnet_keys = set(build_backbone("ResNet50_face").state_dict())
    for k in ("stem.0.conv.weight", "blocks.0.short.conv.weight", "blocks.3.short.bn._mean",
              "blocks.15.conv2.conv.weight", "fc.weight", "fc.bias"):
        assert k in resnet_keys, k
    assert "blocks.1.short.conv.weight" not in resnet_keys  # identity shortcut inside a stage


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ConfigError) as e:
        build_backbone("MobileFaceNet_v9")
    assert "MobileFaceNet" in str(e.value) and "ResNet50_face" in str(e.value)


def test_embedding_size_override():
    model = build_backbone("MobileFaceNet", embedding_size=64)
    model.eval()
    with paddle.no_grad():
        assert list(model(paddle.zeros([1, 3, 112, 112])).shape) == [1, 64]


# ---------------------------------------------------------------- ArcMargin

def _head_with_angles(cos_target, margin=0.5, scale=64.0, easy_margin=False):
    """A 2-class, 2-d head and one feature at angle arccos(cos_target) from class 0."""
    head = ArcMargin(2, 2, margin=margin, scale=scale, easy_margin=easy_margin)
    head.weight.set_value(np.eye(2, dtype=np.float32))  # class 0 along x, class 1 along y
    theta = math.acos(cos_target)
    feat = paddle.to_tensor([[3.0 * math.cos(theta), 3.0 * math.sin(theta)]], dtype="float32")
    return head, feat


def test_arcmargin_adds_angular_margin_to_target_only():
    head, feat = _head_with_angles(0.6)
    logits = head(feat, paddle.to_tensor([0])).numpy()[0]
    theta = math.acos(0.6)
    assert logits[0] == pytest.approx(64.0 * math.cos(theta + 0.5), abs=1e-3)
    assert logits[0] < 64.0 * 0.6  # the margin lowers the target logit
    assert logits[1] == pytest.approx(64.0 * math.sin(theta), abs=1e-3)  # non-target: plain s*cos


def test_arcmargin_eval_returns_cosine():
    paddle.seed(1)
    head = ArcMargin(128, 10)
    feats = paddle.randn([6, 128]) * 10
    cos = head(feats).numpy()
    assert cos.shape == (6, 10)
    assert np.all(cos <= 1.0 + 1e-5) and np.all(cos >= -1.0 - 1e-5)
    f = feats.numpy() / np.linalg.norm(feats.numpy(), axis=1, keepdims=True)
    w = head.weight.numpy() / np.linalg.norm(head.weight.numpy(), axis=0, keepdims=True)
    np.testing.assert_allclose(cos, f @ w, atol=1e-5)
    assert list(head.weight.shape) == [128, 10]


def test_arcmargin_past_pi_minus_m_stays_monotonic():
    """theta + m > pi: cos(theta + m) would rise again; the th/mm rule keeps it falling."""
    m = 0.5
    head, feat = _head_with_angles(-0.95, margin=m)  # theta = 2.82 > pi - m = 2.64
    logit = head(feat, paddle.to_tensor([[0]])).numpy()[0, 0]  # label as [N, 1] also works
    expected = 64.0 * (-0.95 - math.sin(math.pi - m) * m)
    assert logit == pytest.approx(expected, abs=1e-3)
    assert logit < 64.0 * math.cos(math.acos(-0.95) + m)  # not the wrapped-around value
    # and the target logit decreases with the angle across the switch point
    values = []
    for c in (-0.80, -0.87, -0.88, -0.90, -0.99):
        h, f = _head_with_angles(c, margin=m)
        values.append(h(f, paddle.to_tensor([0])).numpy()[0, 0])
    assert all(a > b for a, b in zip(values, values[1:]))


def test_arcmargin_easy_margin_leaves_negative_cosines():
    head, feat = _head_with_angles(-0.3, easy_margin=True)
    assert head(feat, paddle.to_tensor([0])).numpy()[0, 0] == pytest.approx(64.0 * -0.3, abs=1e-3)


def test_arcmargin_gradient_is_finite_at_extremes():
    head = ArcMargin(2, 2)
    head.weight.set_value(np.eye(2, dtype=np.float32))
    feat = paddle.to_tensor([[1.0, 0.0], [-1.0, 0.0]], stop_gradient=False)  # cos exactly +-1
    loss = paddle.nn.functional.cross_entropy(head(feat, paddle.to_tensor([0, 0])), paddle.to_tensor([0, 0]))
    loss.backward()
    assert np.isfinite(feat.grad.numpy()).all() and np.isfinite(head.weight.grad.numpy()).all()


# ---------------------------------------------------------------- FaceRecModel and weights

def test_facerecmodel_features_and_logits(mobilefacenet):
    model = FaceRecModel(mobilefacenet, ArcMargin(128, 7))
    keys = list(model.state_dict())
    assert all(k.startswith("backbone.") or k.startswith("head.") for k in keys)
    assert "head.weight" in keys
    x = paddle.rand([2, 3, 112, 112])
    with paddle.no_grad():
        assert list(model(x).shape) == [2, 128]
        assert list(model(x, paddle.to_tensor([1, 6])).shape) == [2, 7]


def test_load_backbone_weights_from_full_checkpoint(tmp_path):
    paddle.seed(2)
    trained = FaceRecModel(build_backbone("MobileFaceNet"), ArcMargin(128, 10))
    for name, t in trained.state_dict().items():  # make every tensor distinct from a fresh init
        rng = np.random.default_rng(abs(hash(name)) % 2**32)
        base = 1.0 if name.endswith("_variance") else 0.0
        t.set_value((base + np.abs(rng.normal(0, 0.05, t.shape)) if base else rng.normal(0, 0.05, t.shape)).astype("float32"))
    path = str(tmp_path / "model.pdparams")
    paddle.save(trained.state_dict(), path)

    fresh = build_backbone("MobileFaceNet")
    report = load_backbone_weights(fresh, path)
    assert len(report["loaded"]) == len(fresh.state_dict())
    assert report["missing"] == [] and report["skipped"] == []
    assert report["ignored"] == ["head.weight"]  # the head is not part of the backbone
    x = paddle.rand([2, 3, 112, 112])
    trained.eval()
    fresh.eval()
    with paddle.no_grad():
        np.testing.assert_allclose(fresh(x).numpy(), trained.backbone(x).numpy(), rtol=1e-5, atol=1e-5)

    # a bare backbone state dict (no "backbone." prefix) loads too
    bare = build_backbone("MobileFaceNet")
    report = load_backbone_weights(bare, trained.backbone.state_dict())
    assert len(report["loaded"]) == len(bare.state_dict())


def test_full_model_load_skips_mismatched_head():
    src = FaceRecModel(build_backbone("MobileFaceNet"), ArcMargin(128, 10))
    dst = FaceRecModel(build_backbone("MobileFaceNet"), ArcMargin(128, 4))
    report = load_weights_by_name(dst, src.state_dict(), source="pretrained")
    assert [name for name, _ in report["skipped"]] == ["head.weight"]
    assert "[128, 10]" in report["skipped"][0][1] and "[128, 4]" in report["skipped"][0][1]
    assert len(report["loaded"]) == len(dst.state_dict()) - 1
    np.testing.assert_array_equal(dst.backbone.conv1.conv.weight.numpy(), src.backbone.conv1.conv.weight.numpy())


def test_load_backbone_weights_errors(tmp_path):
    backbone = build_backbone("MobileFaceNet")
    with pytest.raises(UserError, match="not found"):
        load_backbone_weights(backbone, str(tmp_path / "missing.pdparams"))
    junk = tmp_path / "junk.pdparams"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(UserError, match="junk.pdparams"):
        load_backbone_weights(backbone, str(junk))
    # a checkpoint of another architecture shares no tensor name+shape
    other = {"stem.0.conv.weight": np.zeros((64, 3, 7, 7), np.float32)}
    with pytest.raises(UserError, match="no tensor that fits"):
        load_backbone_weights(backbone, other)
    # strict: a different embedding size is refused and the message says what differs
    small = build_backbone("MobileFaceNet", embedding_size=64).state_dict()
    with pytest.raises(UserError, match=r"linear1\.conv\.weight.*\[64, 512, 1, 1\]"):
        load_backbone_weights(backbone, small, strict=True)
    report = load_backbone_weights(backbone, small)  # non-strict: loads the rest, reports the rest
    assert {n for n, _ in report["skipped"]} == {"linear1.conv.weight", "linear1.bn.weight", "linear1.bn.bias",
                                                 "linear1.bn._mean", "linear1.bn._variance"}


def test_partial_fc_scores_every_positive_and_equals_the_full_head_when_it_samples_all():
    paddle.seed(0)
    feat = paddle.randn([6, 16])
    label = paddle.to_tensor([3, 3, 7, 0, 19, 7])
    full = ArcMargin(16, 20)
    full.train()
    logits, target = full.margin_logits(feat, label)
    assert list(logits.shape) == [6, 20] and target.numpy().tolist() == label.numpy().tolist()
    # the sampling path with every class sampled (rate 1.0 short-cuts it): same logits, same loss
    sampled = ArcMargin(16, 20, sample_rate=0.999)
    sampled.weight.set_value(full.weight)
    sampled.train()
    index, pos = sampled.sample_classes(label)
    assert index.numpy().tolist() == list(range(20))
    s_logits, s_target = sampled.margin_logits(feat, label)
    np.testing.assert_allclose(s_logits.numpy(), logits.numpy(), rtol=1e-6, atol=1e-6)
    loss = paddle.nn.functional.cross_entropy(logits, target.reshape([-1, 1]))
    s_loss = paddle.nn.functional.cross_entropy(s_logits, s_target.reshape([-1, 1]))
    assert float(s_loss) == pytest.approx(float(loss), rel=1e-6)
    # a real subset: 25 % of the classes, every positive inside, targets point at them
    quarter = ArcMargin(16, 20, sample_rate=0.25)
    quarter.weight.set_value(full.weight)
    quarter.train()
    paddle.seed(5)
    q_logits, q_target = quarter.margin_logits(feat, label)
    assert q_logits.shape[1] == 5  # round(0.25 * 20) = 5 >= the 4 distinct positives
    paddle.seed(5)  # the same draw again, to see which classes were scored
    index, _ = quarter.sample_classes(label)
    chosen = index.numpy()
    assert set(label.numpy().tolist()) <= set(chosen.tolist())
    np.testing.assert_array_equal(chosen[q_target.numpy()], label.numpy())
    # the positive's logit is the full head's positive logit (same centre, same margin)
    np.testing.assert_allclose(q_logits.numpy()[np.arange(6), q_target.numpy()],
                               logits.numpy()[np.arange(6), label.numpy()], rtol=1e-5, atol=1e-5)
    quarter.eval()  # evaluation never samples
    assert quarter.margin_logits(feat, label)[0].shape[1] == 20


def _tiny_backbone(name, recompute):
    from models.mobilefacenet import MobileFaceNet
    from models.resnet_face import ResNet50Face

    if name == "MobileFaceNet":  # two strided stages: a 56x56 input ends at 7x7 like 112x112 does
        return MobileFaceNet(embedding_size=16, settings=[(2, 8, 2, 2), (2, 16, 1, 2)], recompute=recompute)
    return ResNet50Face(embedding_size=16, stages=[(4, 2, 2), (8, 1, 2)], recompute=recompute)


def count_trainable(layer):
    return sum(1 for p in layer.parameters() if not p.stop_gradient)


def _one_step(name, recompute, calls):
    import paddle.nn.functional as F

    paddle.seed(0)
    backbone = _tiny_backbone(name, recompute)
    block = backbone.blocks[0]
    block.register_forward_pre_hook(lambda layer, inputs: calls.append(1))
    model = FaceRecModel(backbone, ArcMargin(16, 5))
    model.train()
    rng = np.random.RandomState(0)
    x = paddle.to_tensor(rng.uniform(-1, 1, (4, 3, 56, 56)).astype("float32"))
    y = paddle.to_tensor(np.array([0, 1, 2, 4], dtype="int64"))
    loss = F.cross_entropy(model(x, y), y)
    loss.backward()
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
    stats = {n: v.numpy().copy() for n, v in model.state_dict().items() if n.endswith(("_mean", "_variance"))}
    return float(loss), grads, stats


@pytest.mark.parametrize("name", ["MobileFaceNet", "ResNet50_face"])
def test_recompute_gives_the_plain_loss_gradients_and_batchnorm_statistics(name):
    """Train.recompute: the blocks run a second time in backward (so their activations were not
    kept), yet the loss, every parameter's gradient and the BN running statistics (updated once,
    not twice) equal the plain run's within float rounding."""
    plain_calls, recompute_calls = [], []
    loss0, grads0, stats0 = _one_step(name, False, plain_calls)
    loss1, grads1, stats1 = _one_step(name, True, recompute_calls)
    assert len(plain_calls) == 1 and len(recompute_calls) == 2
    assert loss1 == pytest.approx(loss0, rel=1e-6)
    assert set(grads1) == set(grads0) and len(grads0) == count_trainable(_tiny_backbone(name, False)) + 1
    for key, g in grads0.items():
        np.testing.assert_allclose(grads1[key], g, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(g).max())), err_msg=key)
    for key, v in stats0.items():
        np.testing.assert_allclose(stats1[key], v, rtol=1e-6, atol=1e-7, err_msg=key)


def test_recompute_is_off_in_eval_and_without_gradients():
    backbone = _tiny_backbone("MobileFaceNet", True)
    calls = []
    backbone.blocks[0].register_forward_pre_hook(lambda layer, inputs: calls.append(1))
    x = paddle.to_tensor(np.zeros((2, 3, 56, 56), dtype="float32"))
    backbone.eval()
    backbone(x)
    backbone.train()
    with paddle.no_grad():
        backbone(x)
    assert len(calls) == 2  # one forward each, nothing wrapped for a backward that never comes
