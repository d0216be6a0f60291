"""The fused CPU PReLU / depthwise-conv kernels give Paddle's own results, forward and backward.

The kernels are compiled on first use (about 30 s, then cached); the tests skip only when this
machine has no C++ compiler, which is the one case where models/fast_cpu_ops.py is meant to fall back.
"""
import numpy as np
import paddle
import paddle.nn as nn
import pytest

from models import fast_cpu_ops
from models.layers import DepthwiseConv2D, PReLU, make_depthwise_conv, make_prelu

HAVE_CXX = fast_cpu_ops.cxx_compiler()[0] is not None  # the compiler enable() looks for
needs_cxx = pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler: the fused kernels cannot be built here")


def _forward_backward(layer, x_np, g_np, fast):
    fast_cpu_ops.enable(fast)
    x = paddle.to_tensor(x_np, stop_gradient=False)
    y = layer(x)
    y.backward(paddle.to_tensor(g_np))
    grads = {name: p.grad.numpy().copy() for name, p in layer.named_parameters()}
    layer.clear_gradients()
    return y.numpy(), x.grad.numpy(), grads


def _assert_same(layer, x_np, seed):
    rng = np.random.RandomState(seed)
    fast_cpu_ops.enable(False)
    g_np = rng.randn(*layer(paddle.to_tensor(x_np)).shape).astype("float32")
    plain = _forward_backward(layer, x_np, g_np, False)
    fast = _forward_backward(layer, x_np, g_np, True)
    np.testing.assert_allclose(fast[0], plain[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast[1], plain[1], rtol=1e-5, atol=1e-5)
    assert fast[2].keys() == plain[2].keys()
    for name in plain[2]:
        np.testing.assert_allclose(fast[2][name], plain[2][name], rtol=1e-4, atol=1e-4, err_msg=name)


@needs_cxx
@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (2, 4, 1, 1), (4, 3)])
def test_prelu_matches_paddle(fast_ops, shape):
    rng = np.random.RandomState(0)
    layer = make_prelu(shape[1])
    layer._weight.set_value(rng.uniform(-0.5, 0.8, shape[1]).astype("float32"))
    x = rng.randn(*shape).astype("float32")
    x.flat[::7] = 0.0  # the x == 0 branch: slope side for both gradients, as Paddle does
    _assert_same(layer, x, 1)


@needs_cxx
@pytest.mark.parametrize("channels,size,kernel,stride,padding", [
    (6, 9, 3, 1, 1), (5, 9, 3, 2, 1), (4, 8, 3, 2, 1), (3, 7, 7, 1, 0), (4, 10, 3, 2, 0), (2, 5, 3, 1, 2),
])
def test_depthwise_conv_matches_paddle(fast_ops, channels, size, kernel, stride, padding):
    rng = np.random.RandomState(channels + size)
    layer = make_depthwise_conv(channels, kernel, stride=stride, padding=padding)
    x = rng.randn(3, channels, size, size).astype("float32")
    _assert_same(layer, x, 2)


def test_fast_layers_keep_plain_parameter_names_and_shapes():
    prelu, plain_prelu = make_prelu(8), nn.PReLU(num_parameters=8, init=0.25)
    assert isinstance(prelu, PReLU)
    assert {k: v.shape for k, v in prelu.state_dict().items()} == {k: v.shape for k, v in plain_prelu.state_dict().items()}
    conv = make_depthwise_conv(8, 3, stride=2, padding=1)
    plain_conv = nn.Conv2D(8, 8, 3, stride=2, padding=1, groups=8, bias_attr=False)
    assert isinstance(conv, DepthwiseConv2D)
    assert {k: v.shape for k, v in conv.state_dict().items()} == {k: v.shape for k, v in plain_conv.state_dict().items()}
    # A plain layer's weights load into the fast one and give the same output.
    conv.set_state_dict(plain_conv.state_dict())
    x = paddle.randn([2, 8, 6, 6])
    np.testing.assert_allclose(conv(x).numpy(), plain_conv(x).numpy(), rtol=1e-6, atol=1e-6)


@needs_cxx
def test_static_graph_tracing_uses_paddle_ops(fast_ops, tmp_path):
    """Export traces the plain Paddle operators, so inference models never need the custom ops."""
    fast_cpu_ops.enable(True)
    net = nn.Sequential(make_depthwise_conv(4, 3, padding=1), make_prelu(4))
    net.eval()
    x = paddle.randn([2, 4, 8, 8])
    eager = net(x).numpy()
    # As engine/runners/export.py does it: jit.save straight from the dygraph layer.
    paddle.jit.save(net, str(tmp_path / "m"), input_spec=[paddle.static.InputSpec([None, 4, 8, 8], "float32")])
    saved = [p for p in tmp_path.iterdir() if p.suffix in (".json", ".pdmodel")]
    assert saved, sorted(tmp_path.iterdir())
    assert b"fast_prelu" not in saved[0].read_bytes() and b"fast_depthwise" not in saved[0].read_bytes()
    loaded = paddle.jit.load(str(tmp_path / "m"))
    np.testing.assert_allclose(loaded(x).numpy(), eager, rtol=1e-5, atol=1e-5)
    assert fast_cpu_ops.usable_for(x)  # tracing left the switch as it was


def test_disable_env_wins(monkeypatch):
    monkeypatch.setenv(fast_cpu_ops.DISABLE_ENV, "1")
    assert fast_cpu_ops.enable(True) is False
    assert fast_cpu_ops.DISABLE_ENV in fast_cpu_ops.status()
    assert not fast_cpu_ops.usable_for(paddle.zeros([1, 2]))


@needs_cxx
def test_mobilefacenet_step_matches_plain(fast_ops):
    """One forward/backward of the whole backbone: same features and parameter gradients.

    Gradients of BN shifts deep in the network are sums that cancel to almost nothing, where
    float32 rounding alone changes them by 100% (Paddle's own 1-thread vs 2-thread runs do);
    so the check is on the relative L2 error of all gradients together and per tensor for the
    kernels' own parameters. Measured: fused vs plain 5e-4 (1 thread), 5e-3 (2 threads); plain
    Paddle 1 thread vs 2 threads 4e-3. A wrong tap or branch in a kernel gives 1e-1 or more.
    """
    from models import build_backbone

    paddle.seed(3)
    net = build_backbone("MobileFaceNet")
    net.train()
    rng = np.random.RandomState(3)
    x_np = rng.uniform(-1, 1, (2, 3, 112, 112)).astype("float32")
    g_np = rng.randn(2, net.embedding_size).astype("float32")
    results = []
    for fast in (False, True):
        fast_cpu_ops.enable(fast)
        feat = net(paddle.to_tensor(x_np))
        feat.backward(paddle.to_tensor(g_np))
        # BN running statistics are parameters without gradients
        results.append((feat.numpy(), {n: p.grad.numpy().copy() for n, p in net.named_parameters()
                                       if p.grad is not None}))
        net.clear_gradients()
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-4, atol=1e-4)
    plain, fast = results[0][1], results[1][1]
    assert fast.keys() == plain.keys()
    names = sorted(plain)
    flat_plain = np.concatenate([plain[n].ravel() for n in names])
    flat_fast = np.concatenate([fast[n].ravel() for n in names])
    assert np.linalg.norm(flat_fast - flat_plain) / np.linalg.norm(flat_plain) < 1e-2
    kernel_params = [n for n, layer in net.named_sublayers() if isinstance(layer, (PReLU, DepthwiseConv2D))]
    assert len(kernel_params) == 17 + 33  # depthwise convs + PReLUs of MobileFaceNet
    for layer_name in kernel_params:
        for n in names:
            if n.rsplit(".", 1)[0] == layer_name:
                err = np.linalg.norm(fast[n] - plain[n]) / np.linalg.norm(plain[n])
                assert err < 1e-2, (n, err)
