"""Training memory: the fused BatchNorm + PReLU layer (models/fast_cpu_ops.batchnorm_prelu) keeps
only its output for the backward pass and still gives the plain layers' output, gradients and
running statistics; MobileFaceNet then keeps well under half the activations of plain eager mode.

The fused kernels compile on first use (about 30 s, then cached); the tests skip only on a machine
without a C++ compiler, where training runs Paddle's own operators.
"""
import numpy as np
import paddle
import paddle.nn as nn
import pytest

from models import fast_cpu_ops
from models.layers import ConvBNPReLU, make_batchnorm, make_prelu

HAVE_CXX = fast_cpu_ops.cxx_compiler()[0] is not None
pytestmark = pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler: the fused kernels cannot be built here")


def _pair(channels, seed, gamma_sign=True):
    """A BatchNorm and a PReLU with random (but invertible) parameters and running statistics."""
    rng = np.random.RandomState(seed)
    bn, prelu = make_batchnorm(channels), make_prelu(channels)
    gamma = rng.uniform(0.5, 1.5, channels) * (rng.choice([-1, 1], channels) if gamma_sign else 1)
    bn.weight.set_value(gamma.astype("float32"))
    bn.bias.set_value(rng.uniform(-0.5, 0.5, channels).astype("float32"))
    bn._mean.set_value(rng.uniform(-0.1, 0.1, channels).astype("float32"))
    bn._variance.set_value(rng.uniform(0.5, 2.0, channels).astype("float32"))
    prelu._weight.set_value(rng.uniform(0.05, 0.9, channels).astype("float32"))
    return bn, prelu


def _run(bn, prelu, x_np, g_np, fused):
    """Output, input gradient, parameter gradients and running statistics after one step."""
    layers = [bn] + ([prelu] if prelu is not None else [])
    state = {id(p): p.numpy().copy() for layer in layers for p in layer.state_dict().values()}
    fast_cpu_ops.enable(fused)
    try:
        x = paddle.to_tensor(x_np, stop_gradient=False)
        y = fast_cpu_ops.batchnorm_prelu(x, bn, prelu)
        y.backward(paddle.to_tensor(g_np))
        grads = {f"{i}.{n}": p.grad.numpy().copy() for i, layer in enumerate(layers)
                 for n, p in layer.named_parameters() if p.grad is not None}
        stats = {"mean": bn._mean.numpy().copy(), "variance": bn._variance.numpy().copy()}
    finally:
        for layer in layers:
            layer.clear_gradients()
            for p in layer.state_dict().values():
                p.set_value(state[id(p)])
    return y.numpy(), x.grad.numpy(), grads, stats


def _assert_same(plain, fused):
    np.testing.assert_allclose(fused[0], plain[0], rtol=1e-5, atol=1e-5, err_msg="output")
    np.testing.assert_allclose(fused[1], plain[1], rtol=1e-4, atol=1e-5, err_msg="input gradient")
    assert fused[2].keys() == plain[2].keys()
    for name in plain[2]:
        np.testing.assert_allclose(fused[2][name], plain[2][name], rtol=1e-4, atol=1e-4, err_msg=name)
    for name in plain[3]:
        np.testing.assert_allclose(fused[3][name], plain[3][name], rtol=1e-5, atol=1e-6, err_msg=name)


def _run_counting_fused_calls(bn, prelu, x, g):
    """_run with the fast path on, and how many times the fused layer itself ran."""
    calls = []
    original = fast_cpu_ops._BatchNormPReLU.apply
    fast_cpu_ops._BatchNormPReLU.apply = lambda *a: calls.append(1) or original(*a)
    try:
        return _run(bn, prelu, x, g, True), calls
    finally:
        fast_cpu_ops._BatchNormPReLU.apply = original


@pytest.mark.parametrize("shape,with_prelu", [((4, 6, 5, 7), True), ((3, 5, 1, 1), True), ((2, 8, 9, 9), False)])
def test_fused_batchnorm_prelu_matches_the_plain_layers(fast_ops, shape, with_prelu):
    rng = np.random.RandomState(len(shape) + shape[1])
    bn, prelu = _pair(shape[1], shape[0])
    prelu = prelu if with_prelu else None
    x = (rng.randn(*shape) * 2 + 0.5).astype("float32")
    g = rng.randn(*shape).astype("float32")
    fused, calls = _run_counting_fused_calls(bn, prelu, x, g)
    assert calls == [1]  # the fused layer ran, not the fallback
    _assert_same(_run(bn, prelu, x, g, False), fused)


@pytest.mark.parametrize("what", ["negative slope", "zero slope", "tiny gamma"])
def test_layers_it_cannot_invert_run_the_plain_operators(fast_ops, what):
    bn, prelu = _pair(4, 7)
    if what == "tiny gamma":
        bn.weight.set_value(np.array([1.0, 1e-4, 0.7, 1.2], "float32"))
    else:
        prelu._weight.set_value(np.array([0.2, -0.3 if what == "negative slope" else 0.0, 0.5, 0.25], "float32"))
    rng = np.random.RandomState(1)
    x, g = rng.randn(3, 4, 6, 6).astype("float32"), rng.randn(3, 4, 6, 6).astype("float32")
    fused, calls = _run_counting_fused_calls(bn, prelu, x, g)
    assert calls == []
    _assert_same(_run(bn, prelu, x, g, False), fused)


def test_eval_mode_and_tracing_use_paddle_ops(fast_ops, tmp_path):
    fast_cpu_ops.enable(True)
    net = nn.Sequential(ConvBNPReLU(3, 4, 3, padding=1), ConvBNPReLU(4, 4, 3, padding=1, depthwise=True))
    x = paddle.randn([2, 3, 8, 8])
    net.train()
    net(x)  # moves the running statistics
    net.eval()
    eager = net(x).numpy()
    paddle.jit.save(net, str(tmp_path / "m"), input_spec=[paddle.static.InputSpec([None, 3, 8, 8], "float32")])
    saved = [p for p in tmp_path.iterdir() if p.suffix in (".json", ".pdmodel")]
    assert saved and b"fast_bn_prelu" not in saved[0].read_bytes()
    np.testing.assert_allclose(paddle.jit.load(str(tmp_path / "m"))(x).numpy(), eager, rtol=1e-5, atol=1e-5)


def _tiny_mobilefacenet(recompute=False):
    from models.mobilefacenet import MobileFaceNet

    paddle.seed(5)
    return MobileFaceNet(embedding_size=16, settings=[(2, 8, 2, 2), (2, 16, 1, 2)], recompute=recompute)


def _tiny_resnet(recompute=False):
    from models.resnet_face import ResNet50Face

    paddle.seed(5)  # its conv2 / shortcut BatchNorms (no activation) take the fused layer with slope 1
    return ResNet50Face(embedding_size=16, stages=[(4, 2, 2), (8, 1, 2)], recompute=recompute)


def _kept_bytes(net, x):
    """Bytes of the distinct tensors autograd keeps for the backward pass of net(x)."""
    kept = {}

    def pack(t):
        kept[t.data_ptr()] = int(t.numel()) * t.element_size()
        return t

    with paddle.autograd.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    return sum(kept.values()), out


def test_mobilefacenet_keeps_under_half_the_activations(fast_ops):
    x = paddle.to_tensor(np.random.RandomState(0).uniform(-1, 1, (4, 3, 56, 56)).astype("float32"))
    net = _tiny_mobilefacenet()
    net.train()
    sizes = {}
    for fused in (False, True):
        fast_cpu_ops.enable(fused)
        sizes[fused], _ = _kept_bytes(net, x)
    fast_cpu_ops.enable(True)
    assert sizes[True] < 0.45 * sizes[False], sizes


@pytest.mark.parametrize("build,recompute", [(_tiny_mobilefacenet, False), (_tiny_mobilefacenet, True),
                                             (_tiny_resnet, False)])
def test_whole_step_with_the_fused_layer_matches_plain(fast_ops, build, recompute):
    """Features, gradients and BatchNorm statistics of a whole (tiny) backbone step, fused kernels
    vs Paddle's own operators; with Train.recompute the fused layers run twice in backward."""
    rng = np.random.RandomState(2)
    x_np = rng.uniform(-1, 1, (4, 3, 56, 56)).astype("float32")
    g_np = rng.randn(4, 16).astype("float32")
    results = []
    for fused in (False, True):
        fast_cpu_ops.enable(fused)
        net = build(recompute=recompute and fused)
        net.train()
        feat = net(paddle.to_tensor(x_np))
        feat.backward(paddle.to_tensor(g_np))
        results.append((feat.numpy(), {n: p.grad.numpy().copy() for n, p in net.named_parameters() if p.grad is not None},
                        {n: v.numpy().copy() for n, v in net.state_dict().items() if n.endswith(("_mean", "_variance"))}))
    fast_cpu_ops.enable(True)
    (feat0, grads0, stats0), (feat1, grads1, stats1) = results
    np.testing.assert_allclose(feat1, feat0, rtol=1e-4, atol=1e-4)
    assert grads1.keys() == grads0.keys()
    names = sorted(grads0)
    flat0 = np.concatenate([grads0[n].ravel() for n in names])
    flat1 = np.concatenate([grads1[n].ravel() for n in names])
    assert np.linalg.norm(flat1 - flat0) / np.linalg.norm(flat0) < 1e-3
    for n in stats0:
        np.testing.assert_allclose(stats1[n], stats0[n], rtol=1e-4, atol=1e-5, err_msg=n)
