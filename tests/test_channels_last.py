"""Channels-last (NHWC) training kernels (models/csrc/channels_last_ops.cc) give Paddle's own NCHW
results: each kernel forward and backward, and a whole MobileFaceNet step, which takes this path
in CPU training.

Skips on a machine without a C++ compiler or without the MKL library in Paddle's wheel, the two
cases where MobileFaceNet is meant to train in NCHW.
"""
import os

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from models import fast_cpu_ops
from models.layers import conv_channels_last, make_batchnorm, make_conv, make_depthwise_conv, make_prelu

pytestmark = pytest.mark.skipif(fast_cpu_ops.cxx_compiler()[0] is None or fast_cpu_ops.mkl_library() is None,
                                reason="no C++ compiler or no MKL in Paddle's wheel: MobileFaceNet trains in NCHW")


def nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _grads(layers):
    out = {f"{i}.{n}": p.grad.numpy().copy() for i, layer in enumerate(layers)
           for n, p in layer.named_parameters() if p.grad is not None}
    for layer in layers:
        layer.clear_gradients()
    return out


def _compare(run_plain, run_nhwc, layers, x_np, x_grad=True, rtol=1e-4):
    """Output, input gradient and parameter gradients of run_plain(NCHW x) and run_nhwc(NHWC x)."""
    rng = np.random.RandomState(7)
    fast_cpu_ops.enable(False)
    x = paddle.to_tensor(x_np, stop_gradient=not x_grad)
    y = run_plain(x)
    g_np = rng.randn(*y.shape).astype("float32")
    y.backward(paddle.to_tensor(g_np))
    plain = y.numpy(), (x.grad.numpy() if x_grad else None), _grads(layers)
    fast_cpu_ops.enable(True)
    xl = paddle.to_tensor(nhwc(x_np), stop_gradient=not x_grad)
    yl = run_nhwc(xl)
    yl.backward(paddle.to_tensor(nhwc(g_np)))
    fast = nchw(yl.numpy()), (nchw(xl.grad.numpy()) if x_grad else None), _grads(layers)
    np.testing.assert_allclose(fast[0], plain[0], rtol=rtol, atol=1e-5, err_msg="output")
    if x_grad:
        np.testing.assert_allclose(fast[1], plain[1], rtol=rtol, atol=1e-5, err_msg="input gradient")
    assert fast[2].keys() == plain[2].keys() and plain[2]
    for name in plain[2]:
        np.testing.assert_allclose(fast[2][name], plain[2][name], rtol=rtol, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("cin,cout,size,kernel,stride,padding,x_grad", [
    (8, 16, 6, 1, 1, 0, True),    # pointwise: one matrix product
    (16, 8, 3, 1, 1, 0, True),
    (3, 8, 12, 3, 2, 1, False),   # the stem: an image, no input gradient
    (4, 6, 7, 3, 2, 1, True),     # through im2col / col2im
    (5, 4, 6, 3, 1, 1, True),
])
def test_dense_conv_nhwc_matches_paddle(fast_ops, cin, cout, size, kernel, stride, padding, x_grad):
    conv = make_conv(cin, cout, kernel, stride=stride, padding=padding)
    x = np.random.RandomState(cin * size).randn(3, cin, size, size).astype("float32")
    _compare(conv, lambda t: conv_channels_last(conv, t), [conv], x, x_grad=x_grad)


@pytest.mark.parametrize("channels,size,kernel,stride,padding", [
    (16, 9, 3, 1, 1), (8, 9, 3, 2, 1), (8, 8, 3, 2, 1), (16, 7, 7, 1, 0), (4, 10, 3, 2, 0), (3, 5, 3, 1, 2),
])
def test_depthwise_conv_nhwc_matches_paddle(fast_ops, channels, size, kernel, stride, padding):
    conv = make_depthwise_conv(channels, kernel, stride=stride, padding=padding)
    x = np.random.RandomState(channels + size).randn(3, channels, size, size).astype("float32")
    _compare(conv, lambda t: conv_channels_last(conv, t), [conv], x)


def test_a_conv_the_kernels_do_not_cover_runs_the_layer_between_transposes(fast_ops):
    conv = nn.Conv2D(4, 6, 3, padding=1)  # with a bias
    x = np.random.RandomState(1).randn(2, 4, 5, 5).astype("float32")
    _compare(conv, lambda t: conv_channels_last(conv, t), [conv], x)


def _bn_pair(channels, seed, invertible=True):
    rng = np.random.RandomState(seed)
    bn, prelu = make_batchnorm(channels), make_prelu(channels)
    bn.weight.set_value((rng.uniform(0.5, 1.5, channels) * rng.choice([-1, 1], channels)).astype("float32"))
    bn.bias.set_value(rng.uniform(-0.5, 0.5, channels).astype("float32"))
    slope = rng.uniform(0.05, 0.9, channels)
    if not invertible:
        slope[0] = -0.1  # a negative slope: y cannot be inverted, the plain NHWC operators run
    prelu._weight.set_value(slope.astype("float32"))
    return bn, prelu


@pytest.mark.parametrize("shape,with_prelu,invertible", [
    ((4, 16, 5, 5), True, True), ((3, 24, 7, 7), False, True), ((2, 16, 1, 1), True, True), ((4, 8, 3, 3), True, False),
])
def test_batchnorm_prelu_nhwc_matches_the_plain_layers(fast_ops, shape, with_prelu, invertible):
    bn, prelu = _bn_pair(shape[1], sum(shape), invertible)
    prelu = prelu if with_prelu else None
    layers = [bn] + ([prelu] if prelu is not None else [])
    start = {n: v.numpy().copy() for n, v in bn.state_dict().items()}
    x = (np.random.RandomState(3).randn(*shape) * 2 + 0.5).astype("float32")
    calls = []
    original = fast_cpu_ops._BatchNormPReLU.apply

    def counted(*args):
        calls.append(args[-1] is True)  # the channels-last form
        return original(*args)

    fast_cpu_ops._BatchNormPReLU.apply = counted
    stats = []
    try:
        def run_plain(t):
            out = prelu(bn(t)) if prelu is not None else bn(t)
            stats.append({n: v.numpy().copy() for n, v in bn.state_dict().items()})
            bn.set_state_dict(start)
            return out

        def run_nhwc(t):
            out = fast_cpu_ops.batchnorm_prelu_nhwc(t, bn, prelu)
            stats.append({n: v.numpy().copy() for n, v in bn.state_dict().items()})
            return out

        bn.train()
        _compare(run_plain, run_nhwc, layers, x)
    finally:
        fast_cpu_ops._BatchNormPReLU.apply = original
    assert calls == ([True] if invertible else [])
    for name in ("_mean", "_variance"):
        np.testing.assert_allclose(stats[1][name], stats[0][name], rtol=1e-5, atol=1e-6, err_msg=name)


def _mobilefacenet_step(layout):
    """Features, gradients and BN statistics of one tiny MobileFaceNet step: 'plain' Paddle, the
    fast kernels in 'nchw' (FACEFEAT_NO_CHANNELS_LAST) or in 'nhwc'; and how many NHWC convs ran."""
    from models.mobilefacenet import MobileFaceNet

    os.environ.pop(fast_cpu_ops.NO_CHANNELS_LAST_ENV, None)
    if layout == "nchw":
        os.environ[fast_cpu_ops.NO_CHANNELS_LAST_ENV] = "1"
    try:
        fast_cpu_ops.enable(layout != "plain")
    finally:
        os.environ.pop(fast_cpu_ops.NO_CHANNELS_LAST_ENV, None)
    paddle.seed(5)
    net = MobileFaceNet(embedding_size=16, settings=[(2, 8, 2, 2), (2, 16, 1, 2)])
    net.train()
    rng = np.random.RandomState(2)
    calls = []
    original = fast_cpu_ops.conv2d_nhwc

    def counted(*args):
        calls.append(1)
        return original(*args)

    fast_cpu_ops.conv2d_nhwc = counted
    try:
        feat = net(paddle.to_tensor(rng.uniform(-1, 1, (4, 3, 56, 56)).astype("float32")))
        feat.backward(paddle.to_tensor(rng.randn(4, 16).astype("float32")))
    finally:
        fast_cpu_ops.conv2d_nhwc = original
        fast_cpu_ops.enable(True)
    grads = {n: p.grad.numpy().copy() for n, p in net.named_parameters() if p.grad is not None}
    stats = {n: v.numpy().copy() for n, v in net.state_dict().items() if n.endswith(("_mean", "_variance"))}
    return feat.numpy(), grads, stats, len(calls)


def test_mobilefacenet_trains_channels_last_with_the_plain_results(fast_ops):
    plain, nchw_fast, nhwc_fast = (_mobilefacenet_step(layout) for layout in ("plain", "nchw", "nhwc"))
    assert plain[3] == 0 and nchw_fast[3] == 0
    assert nhwc_fast[3] == 1 + 3 * 2 + 2  # conv1, expand + project of 3 blocks, conv2, linear1
    for other in (nchw_fast, nhwc_fast):
        np.testing.assert_allclose(other[0], plain[0], rtol=1e-4, atol=1e-4)
        assert other[1].keys() == plain[1].keys()
        names = sorted(plain[1])
        flat0 = np.concatenate([plain[1][n].ravel() for n in names])
        flat1 = np.concatenate([other[1][n].ravel() for n in names])
        assert np.linalg.norm(flat1 - flat0) / np.linalg.norm(flat0) < 1e-3
        for n in plain[2]:
            np.testing.assert_allclose(other[2][n], plain[2][n], rtol=1e-4, atol=1e-5, err_msg=n)


def test_status_names_the_layout_and_the_switch(fast_ops, monkeypatch):
    assert fast_cpu_ops.enable(True)
    assert "channels-last" in fast_cpu_ops.status()
    assert fast_cpu_ops.channels_last_for(paddle.zeros([1, 3, 4, 4]))
    monkeypatch.setenv(fast_cpu_ops.NO_CHANNELS_LAST_ENV, "1")
    assert fast_cpu_ops.enable(True)
    assert fast_cpu_ops.NO_CHANNELS_LAST_ENV in fast_cpu_ops.status()
    assert not fast_cpu_ops.channels_last_for(paddle.zeros([1, 3, 4, 4]))
    monkeypatch.delenv(fast_cpu_ops.NO_CHANNELS_LAST_ENV)
    fast_cpu_ops.enable(True)


def test_eval_mode_and_export_keep_nchw(fast_ops, tmp_path):
    from models.mobilefacenet import MobileFaceNet

    fast_cpu_ops.enable(True)
    paddle.seed(1)
    net = MobileFaceNet(embedding_size=16, settings=[(2, 8, 1, 2)])
    net.eval()
    x = paddle.randn([2, 3, 32, 32])
    with paddle.no_grad():
        eager = net(x).numpy()
    paddle.jit.save(net, str(tmp_path / "m"), input_spec=[paddle.static.InputSpec([None, 3, 32, 32], "float32")])
    saved = [p for p in tmp_path.iterdir() if p.suffix in (".json", ".pdmodel")]
    assert saved and b"nhwc" not in saved[0].read_bytes().lower()
    np.testing.assert_allclose(paddle.jit.load(str(tmp_path / "m"))(x).numpy(), eager, rtol=1e-5, atol=1e-5)


def test_batchnorm_fallback_in_eval_mode_uses_running_statistics(fast_ops):
    bn, prelu = _bn_pair(8, 4)
    bn.eval()
    x = np.random.RandomState(0).randn(2, 8, 3, 3).astype("float32")
    want = prelu(bn(paddle.to_tensor(x))).numpy()
    got = fast_cpu_ops.batchnorm_prelu_nhwc(paddle.to_tensor(nhwc(x)), bn, prelu).numpy()
    np.testing.assert_allclose(nchw(got), want, rtol=1e-5, atol=1e-6)


def test_the_onednn_matrix_product_gives_the_same_convolution(tmp_path):
    """FACEFEAT_CPU_GEMM=dnnl builds the kernels on oneDNN's sgemm (a separate build: one process
    cannot load two libraries with the same operators, so it runs in a child)."""
    if fast_cpu_ops.dnnl_library() is None:
        pytest.skip("no oneDNN in Paddle's wheel")
    import subprocess
    import sys

    code = (
        "import numpy as np, paddle\n"
        "from models import fast_cpu_ops\n"
        "from models.layers import conv_channels_last, make_conv\n"
        "assert fast_cpu_ops.enable(True), fast_cpu_ops.status()\n"
        "assert 'oneDNN matrix products' in fast_cpu_ops.status(), fast_cpu_ops.status()\n"
        "conv = make_conv(8, 16, 1)\n"
        "x = np.random.RandomState(0).randn(2, 8, 5, 5).astype('float32')\n"
        "want = conv(paddle.to_tensor(x)).numpy()\n"
        "got = conv_channels_last(conv, paddle.to_tensor(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))).numpy()\n"
        "print(float(np.abs(got.transpose(0, 3, 1, 2) - want).max()))\n")
    env = {**os.environ, fast_cpu_ops.GEMM_ENV: "dnnl"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(__file__)), env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.strip().splitlines()[-1]) < 1e-4
