"""benchmarks/bring_mobilefacenet.py: a TFJS graph model becomes a Paddle inference folder.

A small graph written here (no download) uses what the converter claims to handle beyond the
MobileFaceNet_TF graph: SAME padding with stride 2 on an odd size (TensorFlow pads after), EXPLICIT
padding, dilation, a depth multiplier, fused BiasAdd + Prelu / Relu6, a reduction keeping its
axes, Squeeze, and quantised weights. The numpy reference is checked against convolutions written
as plain loops; the converted folder must match the reference through InferenceModel in both
program formats (convert refuses to write it otherwise); an unknown op is refused by name.
"""
import base64
import importlib.util
import io
import json
import os
import tarfile

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMBER = "package/models/tiny"


def _bring():
    spec = importlib.util.spec_from_file_location("bring_mobilefacenet",
                                                  os.path.join(REPO, "benchmarks", "bring_mobilefacenet.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _s(text):
    return {"s": base64.b64encode(text.encode()).decode()}


def _ints(values):
    return {"list": {"i": [str(v) for v in values]}}


def _conv(name, op, inputs, strides=1, padding="SAME", dilation=1, fused=(), explicit=()):
    attr = {"strides": _ints([1, strides, strides, 1]), "padding": _s(padding), "data_format": _s("NHWC"),
            "dilations": _ints([1, dilation, dilation, 1]), "explicit_paddings": _ints(explicit)}
    if fused:
        attr["fused_ops"] = {"list": {"s": [_s(f)["s"] for f in fused]}}
        attr["num_args"] = {"i": str(len(inputs) - 2)}
    return {"name": name, "op": op, "input": list(inputs), "attr": attr}


def _node(name, op, inputs=(), **attr):
    return {"name": name, "op": op, "input": list(inputs), "attr": attr}


def _tiny_model(unknown_op=None):
    """(model JSON, weight bytes, {name: float value}) of a small graph over a [N, 9, 9, 3] input."""
    rng = np.random.default_rng(1)
    w = {"w1": rng.normal(0, .5, (3, 3, 3, 4)), "b1": rng.normal(0, .1, 4), "a1": rng.uniform(.1, .3, 4),
         "dw": rng.normal(0, .5, (3, 3, 4, 2)), "db": rng.normal(0, .1, 8), "m": rng.uniform(0, 1, 8),
         "we": rng.normal(0, .3, (3, 3, 8, 8)), "w2": rng.normal(0, .3, (2, 2, 8, 6)),
         "w3": rng.normal(0, .3, (2, 2, 6, 5)), "b3": rng.normal(0, .1, 5), "eps": np.array(1e-10)}
    nodes = [_node("x", "Placeholder", shape={"shape": {"dim": [{"size": "-1"}, {"size": "9"}, {"size": "9"},
                                                                 {"size": "3"}]}})]
    nodes += [_node(k, "Const") for k in list(w) + ["axes", "axes_hw"]]
    nodes += [
        _conv("c1", "_FusedConv2D", ["x", "w1", "b1", "a1"], strides=2, fused=["BiasAdd", "Prelu"]),  # 5x5x4
        _conv("d1", "FusedDepthwiseConv2dNative", ["c1", "dw", "db"], padding="EXPLICIT",
              explicit=[0, 0, 1, 0, 0, 1, 0, 0], fused=["BiasAdd", "Relu6"]),  # 4x4x8
        _node("gap", "Mean", ["d1", "axes_hw"], keep_dims={"b": True}),
        _node("scaled", "Mul", ["d1", "gap"]),
        _node("abs", "Abs", ["scaled"]), _node("sub", "Sub", ["scaled", "abs"]), _node("mul", "Mul", ["sub", "m"]),
        _node("relu", "Relu", ["scaled"]), _node("prelu", "Add", ["relu", "mul"]),
        _conv("e", "Conv2D", ["prelu", "we"], dilation=2),  # 4x4x8
        _conv("c2", "Conv2D", ["e", "w2"], strides=2, padding="VALID"),  # 2x2x6
        _conv("c3", "Conv2D", ["c2", "w3"], padding="VALID"),  # 1x1x5
        _node("bias", "BiasAdd", ["c3", "b3"]),
        _node("sq", "Squeeze", ["bias"], squeeze_dims=_ints([1, 2])),
        _node("square", "Square", ["sq"]), _node("sum", "Sum", ["square", "axes"], keep_dims={"b": True}),
        _node("max", "Maximum", ["sum", "eps"]), _node("rsqrt", "Rsqrt", ["max"]),
        _node("out", unknown_op or "Mul", ["sq", "rsqrt"]),
    ]
    manifest, blob = [], io.BytesIO()
    values = {}
    for k, v in w.items():
        entry = {"name": k, "shape": list(v.shape), "dtype": "float32"}
        if k == "m":  # uint8 affine quantisation
            lo, scale = float(v.min()), float((v.max() - v.min()) / 255)
            q = np.round((v - lo) / scale).astype(np.uint8)
            entry["quantization"] = {"dtype": "uint8", "scale": scale, "min": lo}
            blob.write(q.tobytes())
            values[k] = q * scale + lo
        elif k == "b3":  # float16
            entry["quantization"] = {"dtype": "float16"}
            blob.write(v.astype(np.float16).tobytes())
            values[k] = v.astype(np.float16).astype(np.float64)
        else:
            blob.write(v.astype(np.float32).tobytes())
            values[k] = v.astype(np.float32).astype(np.float64)
        manifest.append(entry)
    for k, v in (("axes", [1]), ("axes_hw", [1, 2])):
        manifest.append({"name": k, "shape": [len(v)], "dtype": "int32"})
        blob.write(np.array(v, np.int32).tobytes())
    model = {"format": "graph-model", "modelTopology": {"node": nodes},
             "weightsManifest": [{"paths": ["tiny.bin"], "weights": manifest}],
             "userDefinedMetadata": {"signature": {"outputs": {"out": {"name": "out"}}}}}
    return model, blob.getvalue(), values


def _tgz(path, model, blob):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in ((MEMBER + ".json", json.dumps(model).encode()), ("package/models/tiny.bin", blob)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def _loop_conv(x, f, stride, pads, dilation=1, depthwise=False):
    """TensorFlow's convolution as plain loops: NHWC x, HWIO (or HW C M) filter, pads ((t, b), (l, r))."""
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    kh, kw = f.shape[:2]
    oh = (xp.shape[1] - dilation * (kh - 1) - 1) // stride + 1
    ow = (xp.shape[2] - dilation * (kw - 1) - 1) // stride + 1
    cout = f.shape[2] * f.shape[3] if depthwise else f.shape[3]
    out = np.zeros((x.shape[0], oh, ow, cout))
    for n in range(x.shape[0]):
        for i in range(oh):
            for j in range(ow):
                for a in range(kh):
                    for b in range(kw):
                        pix = xp[n, i * stride + a * dilation, j * stride + b * dilation]
                        if depthwise:
                            out[n, i, j] += (pix[:, None] * f[a, b]).reshape(-1)
                        else:
                            out[n, i, j] += pix @ f[a, b]
    return out


def test_reference_convolutions_follow_tensorflow_padding():
    bring = _bring()
    model, blob, w = _tiny_model()
    graph = bring.Graph(model)
    weights = bring.decode_weights(model["weightsManifest"], lambda p: blob)
    x = np.random.default_rng(2).uniform(-1, 1, (2, 9, 9, 3))
    for out, expect in (
        ("c1", lambda: _prelu(_loop_conv(x, w["w1"], 2, ((1, 1), (1, 1))) + w["b1"], w["a1"])),  # 9 -> 5: 1 + 1
        ("d1", lambda: np.clip(_loop_conv(_ref(bring, graph, weights, x, "c1"), w["dw"], 1, ((1, 0), (0, 1)),
                                          depthwise=True) + w["db"], 0, 6)),
        ("e", lambda: _loop_conv(_ref(bring, graph, weights, x, "prelu"), w["we"], 1, ((2, 2), (2, 2)), dilation=2)),
    ):
        np.testing.assert_allclose(_ref(bring, graph, weights, x, out), expect(), rtol=1e-9, atol=1e-9)
    # SAME with stride 2 on an even size pads after only (TensorFlow's rule): 8 -> 4 needs 1 row
    assert bring._ref_pads(8, 3, 2, 1, "SAME", None) == (0, 1) == tuple(bring._paddle_pads(8, 3, 2, 1, "SAME", None))


def _prelu(v, alpha):
    return np.where(v >= 0, v, alpha * v)


def _ref(bring, graph, weights, x, node):
    graph.output, graph.order = node, graph._topological(node)
    return bring.reference_forward(graph, weights, x)


def test_decode_weights_restores_quantised_values():
    bring = _bring()
    model, blob, w = _tiny_model()
    weights = bring.decode_weights(model["weightsManifest"], lambda p: blob)
    np.testing.assert_allclose(weights["m"], w["m"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(weights["b3"], w["b3"], rtol=0, atol=1e-7)
    assert weights["axes_hw"].dtype == np.int32 and weights["axes_hw"].tolist() == [1, 2]
    with pytest.raises(SystemExit, match="past its group"):
        bring.decode_weights(model["weightsManifest"], lambda p: blob[:-4])


def test_convert_writes_a_folder_our_model_runs_in_both_formats(tmp_path):
    bring = _bring()
    from engine.inference.model import InferenceModel

    model, blob, _ = _tiny_model()
    tgz = _tgz(tmp_path / "tiny.tgz", model, blob)
    out = str(tmp_path / "brought")
    res = bring.convert(tgz, out, source="human-models", member=MEMBER, log=lambda *_: None)
    assert {"inference.json", "inference.pdmodel", "inference.pdiparams", "inference.yml"} <= set(res["files"])
    assert res["embedding_size"] == 5
    assert min(v["cosine_min"] for v in res["check"]["saved"].values()) >= bring.COSINE_MIN
    assert set(res["check"]["saved"]) == {"pir", "program"}
    m = InferenceModel(out, num_threads=1)
    assert (m.image_size, m.embedding_size, m.format) == (9, 5, "program")
    # the folder's own pre-processing: RGB, (x - 127.5) / 128
    img = np.zeros((9, 9, 3), np.uint8)
    img[..., 2] = 255  # red in BGR
    chw = m.preprocess(img)
    assert chw.shape == (3, 9, 9) and chw[0].max() == pytest.approx(127.5 / 128) and chw[2].max() == pytest.approx(-127.5 / 128)
    feats = m.predict(np.random.default_rng(0).uniform(-1, 1, (3, 3, 9, 9)).astype(np.float32))
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)


def test_unknown_op_is_refused_by_name(tmp_path):
    bring = _bring()
    model, blob, _ = _tiny_model(unknown_op="BatchMatMulV9")
    tgz = _tgz(tmp_path / "tiny.tgz", model, blob)
    with pytest.raises(SystemExit, match="BatchMatMulV9 not supported"):
        bring.convert(tgz, str(tmp_path / "brought"), source="human-models", member=MEMBER,
                      log=lambda *_: None)
    assert not os.path.exists(tmp_path / "brought")
