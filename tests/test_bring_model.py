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
import struct
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


# --------------------------------------------------------------------------- TFLite


class _Fb:
    """A tiny FlatBuffers writer for the test (front to back: every reference points forward).
    A table is {field number: value}; a value is ("i"|"I"|"b"|"B", number), ("str", text),
    ("vec", numpy array of int32/float32/uint8), ("table", table) or ("tables", [tables])."""

    def __init__(self):
        self.buf = bytearray()

    def _align(self):
        self.buf += b"\0" * (-len(self.buf) % 4)

    def _patch(self, at, target):
        struct.pack_into("<I", self.buf, at, target - at)

    def put(self, value):
        kind, v = value
        self._align()
        pos = len(self.buf)
        if kind == "str":
            data = v.encode()
            self.buf += struct.pack("<I", len(data)) + data + b"\0"
        elif kind == "vec":
            self.buf += struct.pack("<I", len(v)) + np.ascontiguousarray(v).tobytes()
        elif kind == "tables":
            self.buf += struct.pack("<I", len(v)) + b"\0" * (4 * len(v))
            for i, t in enumerate(v):
                self._patch(pos + 4 + 4 * i, self.put(("table", t)))
        else:  # a table: its vtable, then the table, then what it refers to
            fields = sorted(v.items())
            slots = [(n, val) for n, val in fields]
            vt_len = 4 + 2 * (max(v) + 1 if v else 0)
            layout, size = {}, 4
            for n, val in slots:
                layout[n], size = size, size + 4
            vt = struct.pack("<HH", vt_len, size) + b"".join(
                struct.pack("<H", layout.get(n, 0)) for n in range(max(v) + 1 if v else 0))
            self.buf += vt
            self._align()
            pos = len(self.buf)
            self.buf += struct.pack("<i", pos - (pos - len(vt) - (-len(vt) % 4))) + b"\0" * (size - 4)
            refs = []
            for n, (k, val) in slots:
                at = pos + layout[n]
                if k in ("i", "I", "b", "B"):
                    struct.pack_into("<" + k, self.buf, at, val)
                else:
                    refs.append((at, (k, val)))
            for at, val in refs:
                self._patch(at, self.put(val))
        return pos

    def finish(self, root):
        self.buf += b"\0" * 4 + b"TFL3"
        self._patch(0, self.put(("table", root)))
        return bytes(self.buf)


def _tiny_tflite():
    """A float TFLite model: CONV_2D (OHWI, bias, SAME, stride 2, fused RELU6) -> DEPTHWISE_CONV_2D
    (multiplier 2, VALID, bias) -> ADD of a constant with fused RELU -> RESHAPE [N,1,1,4] -> [N,4]."""
    rng = np.random.default_rng(3)
    w = {"f1": rng.normal(0, .5, (3, 3, 3, 3)).astype(np.float32), "b1": rng.normal(0, .1, 3).astype(np.float32),
         "f2": rng.normal(0, .5, (1, 3, 3, 6)).astype(np.float32), "b2": rng.normal(0, .1, 6).astype(np.float32),
         "k": rng.normal(0, .3, 6).astype(np.float32), "f3": rng.normal(0, .5, (4, 2, 2, 6)).astype(np.float32)}
    # tensors: 0 x [2,7,7,3], 1 f1, 2 b1, 3 c1 [2,4,4,3], 4 f2, 5 b2, 6 d [2,2,2,6], 7 k, 8 a, 9 f3, 10 c3, 11 out
    spec = [("x", [2, 7, 7, 3], None), ("f1", [3, 3, 3, 3], "f1"), ("b1", [3], "b1"), ("c1", [2, 4, 4, 3], None),
            ("f2", [1, 3, 3, 6], "f2"), ("b2", [6], "b2"), ("d", [2, 2, 2, 6], None), ("k", [6], "k"),
            ("a", [2, 2, 2, 6], None), ("f3", [4, 2, 2, 6], "f3"), ("c3", [2, 1, 1, 4], None), ("out", [2, 4], None)]
    buffers = [{}] + [{0: ("vec", w[key].view(np.uint8).ravel())} for _, _, key in spec if key]
    tensors, b = [], 1
    for name, shape, key in spec:
        tensors.append({0: ("vec", np.array(shape, np.int32)), 1: ("b", 0), 2: ("I", b if key else 0),
                        3: ("str", name)})
        b += bool(key)
    ops = [
        {0: ("I", 0), 1: ("vec", np.array([0, 1, 2], np.int32)), 2: ("vec", np.array([3], np.int32)),
         3: ("B", 1), 4: ("table", {0: ("b", 0), 1: ("i", 2), 2: ("i", 2), 3: ("b", 3)})},  # SAME, RELU6
        {0: ("I", 1), 1: ("vec", np.array([3, 4, 5], np.int32)), 2: ("vec", np.array([6], np.int32)),
         3: ("B", 2), 4: ("table", {0: ("b", 1), 1: ("i", 1), 2: ("i", 1), 3: ("i", 2)})},  # VALID, x2
        {0: ("I", 2), 1: ("vec", np.array([6, 7], np.int32)), 2: ("vec", np.array([8], np.int32)),
         3: ("B", 11), 4: ("table", {0: ("b", 1)})},  # ADD, fused RELU
        {0: ("I", 0), 1: ("vec", np.array([8, 9, -1], np.int32)), 2: ("vec", np.array([10], np.int32)),
         3: ("B", 1), 4: ("table", {0: ("b", 1), 1: ("i", 1), 2: ("i", 1)})},  # VALID, no bias
        {0: ("I", 3), 1: ("vec", np.array([10], np.int32)), 2: ("vec", np.array([11], np.int32))},  # RESHAPE
    ]
    graph = {0: ("tables", tensors), 1: ("vec", np.array([0], np.int32)), 2: ("vec", np.array([11], np.int32)),
             3: ("tables", ops)}
    model = {0: ("I", 3), 1: ("tables", [{3: ("i", c)} for c in (3, 4, 0, 22)]), 2: ("tables", [graph]),
             4: ("tables", buffers)}
    return _Fb().finish(model), w


def test_tflite_reader_maps_layouts_and_fused_activations():
    bring = _bring()
    data, w = _tiny_tflite()
    model, weights = bring.read_tflite(data)
    graph = bring.Graph(model)
    bring.check_supported(graph)
    assert graph.input_shape == [-1, 7, 7, 3] and graph.output == "out"
    x = np.random.default_rng(4).uniform(-1, 1, (3, 7, 7, 3))
    got = bring.reference_forward(graph, weights, x)
    # the same network written directly from the TFLite layouts (OHWI; [1, H, W, C * M], channel c * M + m)
    c1 = np.clip(_loop_conv(x, w["f1"].transpose(1, 2, 3, 0), 2, ((1, 1), (1, 1))) + w["b1"], 0, 6)
    d = _loop_conv(c1, w["f2"].reshape(3, 3, 3, 2), 1, ((0, 0), (0, 0)), depthwise=True) + w["b2"]
    a = np.maximum(d + w["k"], 0)
    expect = _loop_conv(a, w["f3"].transpose(1, 2, 3, 0), 1, ((0, 0), (0, 0))).reshape(3, 4)
    np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-6)


def test_tflite_reader_refuses_unknown_ops_and_other_files():
    bring = _bring()
    data, _ = _tiny_tflite()
    with pytest.raises(SystemExit, match="TFL3"):
        bring.read_tflite(b"\0" * 16)
    # the RESHAPE's opcode turned into SPLIT (49)
    bad = data.replace(struct.pack("<i", 22), struct.pack("<i", 49))
    with pytest.raises(SystemExit, match="builtin op 49"):
        bring.read_tflite(bad)
