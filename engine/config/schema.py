"""Every config key, once: its type, default, allowed range or choices, and what it means.

Two schemas: `ModelConfig` (configs/face_recognition/MobileFaceNet.yaml, ResNet50_face.yaml:
check_dataset, train, evaluate, export, predict) and `PipelineConfig` (pipeline.yaml: the gallery
modes and recognize). engine.config.loader merges a YAML file and `-o` overrides into one of them and
checks every value against the field's type and `setting(...)` limits; runners then read typed
attributes (`cfg.Train.batch_size`). docs/configuration.md is generated from here
(engine.config.reference), so the two cannot drift apart.

Plain dataclasses: nothing here imports Paddle.
"""
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, List, Optional, get_args, get_origin

BACKBONES = ("MobileFaceNet", "ResNet50_face")
MODEL_MODES = ("check_dataset", "train", "evaluate", "export", "predict")
PIPELINE_MODES = ("build_index", "append_index", "remove_index", "recognize", "cluster", "serve")
RUN_MODES = ("paddle", "mkldnn", "mkldnn_bf16")
HPI_BACKENDS = ("paddle", "openvino", "onnxruntime")  # high-performance inference (engine.inference.backends)
HPI_PRECISIONS = ("fp32", "bf16", "int8")  # int8: only a folder whose export passed the gate
EXPORT_FORMATS = ("paddle", "onnx")


# Thread counts above this many per core only queue work on the same cores (and make every
# parallel section slower), so a larger value is a typo or a misunderstanding.
THREADS_PER_CORE = 4


def setting(default, help, *, min=None, max=None, greater_than=None, choices=None, per_core=None):
    """A config field: `default` (a list or a dataclass type is copied per instance), a one-line
    `help`, and the limits checked at load (min/max inclusive, greater_than exclusive, choices;
    per_core: at most this many times the machine's cores)."""
    meta = {"help": help, "min": min, "max": max, "greater_than": greater_than, "choices": choices,
            "per_core": per_core}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    if isinstance(default, type) and is_dataclass(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- model configs
@dataclass
class ModelGlobal:
    model: str = setting("MobileFaceNet", "model name (which official model, which config)", choices=BACKBONES)
    mode: str = setting("check_dataset", "what to run", choices=MODEL_MODES)
    dataset_dir: str = setting("./dataset/face_demo", "dataset folder holding train/ and val/; the default "
                               "demo dataset is generated on first use")
    device: str = setting("cpu", "cpu, gpu, gpu:0 or gpu:0,1,2,3 (several GPUs: data-parallel training)")
    output: str = setting("output", "folder for results, logs and checkpoints")
    seed: int = setting(42, "random seed (shuffle, flip, initial weights)", min=0)
    num_threads: int = setting(2, "CPU threads for Paddle, OpenCV and faiss; 0 = every core", min=0,
                               per_core=THREADS_PER_CORE)
    cpu_speedup: bool = setting(True, "CPU training speed-ups (fused PReLU/depthwise kernels, allocator setting)")
    max_image_pixels: int = setting(50_000_000, "largest image decoded (width x height, read from its header first)",
                                    min=1)


@dataclass
class Convert:
    enable: bool = setting(False, "dataset format conversion: not supported for face features (must stay False)")
    src_dataset_type: Optional[str] = setting(None, "unused (kept for PaddleX compatibility)")


@dataclass
class Split:
    enable: bool = setting(False, "dataset re-splitting: not supported for face features (must stay False)")
    train_percent: Optional[int] = setting(None, "unused (kept for PaddleX compatibility)", min=0, max=100)
    val_percent: Optional[int] = setting(None, "unused (kept for PaddleX compatibility)", min=0, max=100)


@dataclass
class CheckDatasetSection:
    convert: Convert = setting(Convert, "")
    split: Split = setting(Split, "")
    max_errors: int = setting(50, "problems listed before the check stops", min=1)
    decode_sample: int = setting(2000, "images fully decoded (every header is read); all when fewer", min=0)
    decode_all: bool = setting(False, "decode every listed image (slow on large datasets)")


@dataclass
class Head:
    name: str = setting("ArcMargin", "margin head", choices=("ArcMargin",))
    margin: float = setting(0.5, "additive angular margin m (radians)", min=0.0, max=1.5)
    scale: float = setting(64.0, "logit scale s", greater_than=0.0)
    easy_margin: bool = setting(False, "apply the margin only where cos(theta) > 0")
    sample_rate: float = setting(1.0, "Partial FC: share of class centres scored per step (every class in the "
                                 "batch included); 1.0 = the exact softmax over all classes", greater_than=0.0, max=1.0)


@dataclass
class ArchSection:
    backbone: str = setting("MobileFaceNet", "feature network", choices=BACKBONES)
    embedding_size: int = setting(128, "feature length (MobileFaceNet 128, ResNet50_face 512)", min=1)
    image_size: int = setting(112, "input side in pixels (both backbones are built for 112x112)", choices=(112,))
    head: Head = setting(Head, "")
    loss: str = setting("CELoss", "loss over the margin logits", choices=("CELoss",))


@dataclass
class Optimizer:
    name: str = setting("AdamW", "optimizer", choices=("AdamW",))
    beta1: float = setting(0.9, "AdamW beta1", min=0.0, max=0.999999)
    beta2: float = setting(0.999, "AdamW beta2", min=0.0, max=0.999999)
    epsilon: float = setting(1e-8, "AdamW epsilon", greater_than=0.0)
    weight_decay: float = setting(0.05, "decoupled weight decay (not on 1-D parameters: BN, PReLU, bias)", min=0.0)


@dataclass
class TrainTransforms:
    random_flip: float = setting(0.5, "probability of a horizontal flip", min=0.0, max=1.0)


@dataclass
class TrainSection:
    num_classes: Optional[int] = setting(None, "identities; null = from the data, else it must agree with it", min=2)
    epochs_iters: int = setting(25, "epochs", min=1)
    batch_size: int = setting(128, "images per step and device", min=1)
    learning_rate: float = setting(0.002, "peak learning rate", greater_than=0.0)
    warmup_steps: float = setting(1.0, "epochs of linear warm-up from 0", min=0.0)
    eta_min: float = setting(1e-6, "learning rate at the end of the cosine decay", min=0.0)
    optimizer: Optimizer = setting(Optimizer, "")
    transforms: TrainTransforms = setting(TrainTransforms, "")
    amp: str = setting("O1", "mixed precision on GPU (O1) or none (O0); CPU always trains in fp32",
                       choices=("O0", "O1"))
    num_workers: int = setting(2, "image-decoding worker processes (0 = in the training process)", min=0)
    recompute: bool = setting(False, "recompute the backbone's activations in the backward pass: less memory "
                              "(batch 128 under 3 GB), slower steps")
    pretrain_weight_path: Optional[str] = setting("", "start from these weights: a .pdparams path, an http(s) URL, or "
                                                  "'official' (the official weights of Global.model, as PaddleX)")
    pretrain_weight_sha256: Optional[str] = setting(None, "sha256 the downloaded weights must have (optional pin)")
    resume_path: Optional[str] = setting(None, "continue a run from its checkpoint (e.g. output/latest/latest.pdparams)")
    overwrite_output: bool = setting(False, "replace an earlier run's files in Global.output")
    cpu_processes: int = setting(1, "data-parallel CPU processes (gloo) when > 1", min=1)
    log_interval: int = setting(10, "steps between log lines", min=1)
    eval_interval: int = setting(1, "epochs between validations", min=1)
    save_interval: int = setting(1, "epochs between epoch_N/ checkpoints", min=1)


@dataclass
class EvaluateSection:
    weight_path: Optional[str] = setting("output/best_model/best_model.pdparams", "checkpoint (.pdparams) or "
                                         "exported inference folder to score; null = the official Global.model")
    log_interval: int = setting(10, "batches between log lines", min=1)
    batch_size: int = setting(64, "images decoded together", min=1)
    flip: bool = setting(True, "add each image's horizontally flipped feature (insightface protocol)")
    folds: int = setting(10, "cross-validation folds for the threshold", min=2)
    bin_paths: List[str] = setting([], "insightface .bin files to score instead of the val pairs")
    detect: bool = setting(False, "val pair images are raw photos: detect (YuNet) and align each one's main "
                           "face first (no face: the whole image, counted)")


@dataclass
class ExportSection:
    weight_path: str = setting("output/best_model/best_model.pdparams", "checkpoint (.pdparams) to export")
    save_dir: Optional[str] = setting(None, "where to write; null = <weights folder>/inference")
    formats: Optional[List[str]] = setting(None, "what to write: [paddle] (inference.json + .pdmodel) or [paddle, "
                                           "onnx] (also inference.onnx by paddle2onnx, checked against Paddle); "
                                           "null = both where paddle2onnx is installed")
    onnx_tolerance: float = setting(1e-4, "largest ONNX-to-Paddle feature difference accepted at export, relative "
                                    "to the largest feature value (every cosine must also be >= 0.9999)",
                                    greater_than=0.0, max=1.0)
    int8: bool = setting(False, "also write inference_int8.onnx (NNCF post-training int8, calibrated on training "
                         "faces) if its val-pair accuracy loses at most int8_max_loss points; needs the ONNX format "
                         "and pip install \".[cpu,hpi,int8]\"")
    int8_calibration: int = setting(300, "training images (evenly spaced in train/label.txt) that calibrate int8",
                                    min=1)
    int8_max_loss: float = setting(0.2, "largest verification accuracy loss (percentage points, 10-fold val "
                                   "pairs, fp32 -> int8) for which inference_int8.onnx is kept", min=0.0, max=100.0)


@dataclass
class KernelOption:
    run_mode: str = setting("paddle", "paddle (fp32) or mkldnn_bf16 (oneDNN bf16 convolutions)", choices=RUN_MODES)


@dataclass
class HpiConfig:
    backend: Optional[str] = setting(None, "paddle, openvino or onnxruntime; null = automatic (the fastest installed "
                                     "for this CPU, from measurements kept in the code)", choices=HPI_BACKENDS)
    precision: Optional[str] = setting(None, "fp32, bf16 (CPUs with avx512_bf16 or amx) or int8 (OpenVINO, a folder "
                                       "whose export passed Export.int8's accuracy gate); null = the backend's "
                                       "choice (automatic: bf16 where the CPU has it; never int8)",
                                       choices=HPI_PRECISIONS)
    num_threads: Optional[int] = setting(None, "threads of the backend; null = Global.num_threads", min=1,
                                         per_core=THREADS_PER_CORE)
    auto_paddle2onnx: bool = setting(True, "OpenVINO / ONNX Runtime on a folder without inference.onnx: convert it "
                                     "(PaddleX's auto_paddle2onnx); False = only a folder's own inference.onnx")


@dataclass
class PredictSection:
    batch_size: int = setting(1, "images per forward pass", min=1)
    model_dir: Optional[str] = setting("output/best_model/inference", "exported inference folder; null = the "
                                       "official Global.model (downloaded once into ~/.cache/facefeat)")
    input: Any = setting("dataset/face_demo/val/images", "image, folder (recursive), URL, or a list of these")
    detect: bool = setting(False, "inputs are raw photos: detect (YuNet) and align each one's main face first "
                           "(no face: an error for a named file, skipped in a folder)")
    kernel_option: KernelOption = setting(KernelOption, "")
    use_hpip: bool = setting(False, "high-performance inference for predict and evaluate: OpenVINO / ONNX Runtime "
                             "on an ONNX model (needs pip install \".[cpu,hpi]\"); False = Paddle Inference")
    hpi_config: HpiConfig = setting(HpiConfig, "")


@dataclass
class ModelConfig:
    Global: ModelGlobal = setting(ModelGlobal, "")
    CheckDataset: CheckDatasetSection = setting(CheckDatasetSection, "")
    Arch: ArchSection = setting(ArchSection, "")
    Train: TrainSection = setting(TrainSection, "")
    Evaluate: EvaluateSection = setting(EvaluateSection, "")
    Export: ExportSection = setting(ExportSection, "")
    Predict: PredictSection = setting(PredictSection, "")


# --------------------------------------------------------------------------- pipeline config
# pipeline.yaml has PaddleX's face_recognition pipeline layout (pipeline_name, index, det_threshold,
# rec_threshold, rec_topk, SubModules: Detection / Recognition), which create_pipeline() reads, plus
# the sections the command line and the service use (Global, Index, Predict, Serve).
DETECTOR_NAMES = ("YuNet", "BlazeFace", "BlazeFace-FPN-SSH", "PicoDet_LCNet_x2_5_face", "PP-YOLOE_plus-S_face")


@dataclass
class DetectionModule:
    module_name: str = setting("face_detection", "PaddleX's module name", choices=("face_detection",))
    model_name: str = setting("YuNet", "YuNet (bundled: boxes and 5 landmarks, no download) or a PaddleX face "
                              "detector (boxes only; landmarks then come from YuNet), exported to model_dir or "
                              "downloaded once by name", choices=DETECTOR_NAMES)
    model_dir: Optional[str] = setting(None, "exported PaddleDetection/PaddleX face detector folder (unused by YuNet)")
    batch_size: int = setting(1, "images per detector call (detection runs one image at a time)", min=1)
    enable: bool = setting(True, "False: every image is already a face crop (the whole image is the face)")
    margin: float = setting(0.2, "square-crop margin (fraction of the box side) for a face without landmarks",
                            min=0.0, max=2.0)
    min_size: int = setting(24, "smallest face side in pixels", min=1)


@dataclass
class RecognitionModule:
    module_name: str = setting("face_feature", "PaddleX's module name", choices=("face_feature",))
    model_name: str = setting("MobileFaceNet", "the feature model; with model_dir null, the official one "
                              "(downloaded once into ~/.cache/facefeat)", choices=BACKBONES)
    model_dir: Optional[str] = setting(None, "exported face feature model (e.g. output/best_model/inference, what "
                                       "train and export write); null = the official model_name, as PaddleX")
    batch_size: int = setting(16, "faces embedded per forward pass", min=1)
    run_mode: str = setting("paddle", "paddle (fp32) or mkldnn_bf16", choices=RUN_MODES)
    use_hpip: bool = setting(False, "high-performance inference: OpenVINO / ONNX Runtime on an ONNX model (needs "
                             "pip install \".[cpu,hpi]\"); False = Paddle Inference")
    hpi_config: HpiConfig = setting(HpiConfig, "")


@dataclass
class SubModulesSection:
    Detection: DetectionModule = setting(DetectionModule, "")
    Recognition: RecognitionModule = setting(RecognitionModule, "")


@dataclass
class PipelineGlobal:
    mode: str = setting("recognize", "what to run", choices=PIPELINE_MODES)
    device: str = setting("cpu", "cpu or gpu:0")
    output: str = setting("output/recognition", "recognize writes <name>_res.json (+ the drawn image) here")
    num_threads: int = setting(2, "CPU threads for Paddle, OpenCV and faiss; 0 = every core. 2 or more: runs of "
                               "many images use that many worker processes of 1 thread each", min=0,
                               per_core=THREADS_PER_CORE)
    max_image_pixels: int = setting(50_000_000, "largest image decoded (width x height, read from its header first)",
                                    min=1)


@dataclass
class IndexSection:
    gallery: str = setting("dataset/face_demo/val/images", "gallery root: one sub-folder of images per person "
                           "(name = label), or the root the label_file paths are relative to")
    label_file: Optional[str] = setting(None, "PaddleX's gallery.txt: '<image path> <label>' lines")
    backend: str = setting("faiss", "faiss (an index folder in this process) or milvus (a collection on Index.uri, "
                           "shared by every process; needs pip install -e \".[milvus]\")", choices=("faiss", "milvus"))
    uri: Optional[str] = setting(None, "milvus: a file ending in .db (Milvus Lite, one process) or http://host:19530 "
                                 "(a Milvus server or cluster); `index` names the collection")
    token: Optional[str] = setting(None, "milvus server: \"user:password\" or an API key (null: none)")
    connect_timeout: float = setting(5.0, "milvus server: seconds one connection attempt may take", greater_than=0.0)
    connect_retries: int = setting(2, "milvus server: retries after a failed connection (back-off 0.5 s, 1 s, ...)",
                                   min=0)
    index_type: str = setting("Flat", "Flat (exact), IVF (IVFFlat), HNSW32; compressed for large galleries: IVFPQ "
                              "(pq_m bytes per face), HNSWSQ (1 byte per dimension)",
                              choices=("Flat", "IVF", "HNSW32", "HNSW", "IVFPQ", "HNSWSQ"))
    metric_type: str = setting("IP", "IP (inner product = cosine) or L2; scores are cosines either way",
                               choices=("IP", "L2"))
    nprobe: int = setting(32, "IVF / IVFPQ lists searched per query", min=1)
    ef_search: int = setting(64, "HNSW / HNSWSQ candidates kept while walking the graph per query: more = closer "
                             "to exact, slower", min=1)
    pq_m: int = setting(0, "IVFPQ bytes per face (must divide the embedding size); 0 = embedding size / 8", min=0)
    rerank: int = setting(0, "IVFPQ / HNSWSQ: re-score rerank x top-k candidates on the exact features (kept in "
                          "exact.index); 0 = off", min=0)
    build_batch: int = setting(10000, "build/append: images embedded and added per step (memory bound; a "
                               "checkpoint is written after each)", min=1)
    resume: bool = setting(True, "build_index: continue an interrupted build from its checkpoint "
                           "(<index>.partial) instead of starting again")
    overwrite: bool = setting(False, "build_index: replace the index that `index` holds (the old one stays until "
                              "the new one is complete); a folder holding anything else is never replaced")
    remove_labels: List[str] = setting([], "remove_index: labels to remove")
    remove_ids: List[int] = setting([], "remove_index: ids (from id_map.yaml) to remove")


@dataclass
class PipelinePredict:
    input: Any = setting("dataset/face_demo/val/images/p00000", "image, folder (recursive), video file, camera index "
                         "(0), stream URL (rtsp://, http(s)://...mp4) or a list")
    save_to_img: bool = setting(True, "also save <name>_res.<input suffix> with boxes, labels and scores")
    draw_landmarks: bool = setting(False, "also draw each face's 5 landmarks on that image")


@dataclass
class VideoSection:
    detect_every: int = setting(5, "video: run the face detector on every n-th frame (tracks carry the faces between)",
                                min=1)
    embed_every: int = setting(12, "video: frames before a track's face is embedded again (sooner when a clearly "
                               "better view comes)", min=1)
    max_embeddings: int = setting(8, "video: embeddings a track keeps for its vote", min=1)
    vote: str = setting("mean", "video: a track's label from the mean of its embeddings, or the majority of their "
                        "decisions", choices=("mean", "majority"))
    min_track_frames: int = setting(3, "video: detection passes a track needs to be reported (shorter: noise)", min=1)
    max_missed_seconds: float = setting(1.0, "video: how long a track survives without its face (occlusion, a "
                                        "missed detection)", min=0.0)
    merge_gap_seconds: float = setting(1.0, "video: a person's tracks closer than this are one timeline interval",
                                       min=0.0)
    reassociate_similarity: Optional[float] = setting(None, "video: least cosine for a face to rejoin the track it "
                                                      "lost; null = max(0.5, rec_threshold)", min=-1.0, max=1.0)
    save_video: bool = setting(True, "recognize: also write <stem>_res.webm with boxes, names and track ids")
    reconnects: int = setting(4, "camera / stream: reopen attempts after it stops sending frames (back-off 0.5 s, "
                              "1 s, 2 s, 4 s)", min=0)


@dataclass
class ClusterSection:
    input: Optional[Any] = setting(None, "cluster: photos to group by person (image, folder read recursively, video file: a "
                         "face per track, or a list); "
                         "photos already in Cluster.output are skipped and new faces join its clusters; null = no "
                         "new photos (to name, merge, split, move or enrol only)")
    output: str = setting("output/clusters", "cluster: the cluster folder (cluster_result.json, clusters.csv, "
                          "features.npy, faces/, clusters/, sheets/, overview.jpg); a later run continues it")
    threshold: Optional[float] = setting(None, "cosine at which two faces join; null = rec_threshold (the model's "
                                         "recorded threshold when that is null too) + threshold_margin", min=-1.0,
                                         max=1.0)
    threshold_margin: float = setting(0.2, "added to rec_threshold when Cluster.threshold is null: grouping "
                                      "thousands of faces needs a stricter cosine than telling two apart "
                                      "(docs/clustering.md#quality)", min=0.0, max=1.0)
    method: str = setting("whispers", "whispers (Chinese whispers: cuts weak bridges between people) or components "
                          "(every chain of joined faces is one person)", choices=("whispers", "components"))
    neighbours: int = setting(64, "nearest faces each face may join in the graph (a person in hundreds of photos "
                              "needs many to stay one cluster)", min=1)
    min_cluster_size: int = setting(2, "smaller groups go to 'unsorted'", min=1)
    min_face_size: int = setting(32, "faces with a shorter box side (pixels) go to 'unsorted' without joining "
                                 "anyone", min=0)
    min_det_score: float = setting(0.7, "faces the detector scored lower go to 'unsorted' without joining anyone",
                                   min=0.0, max=1.0)
    seed: int = setting(0, "Chinese whispers' visiting order (the same input and seed give the same clusters)")
    names: Optional[dict] = setting(None, "name clusters: a mapping {3: Alice, Bob: Robert} (cluster id or current name: new "
                         "name) or a file of '<cluster id or name> <new name>' lines")
    merge: List[Any] = setting([], "[[Alice, 7], [12, 15]]: each list becomes its first cluster (ids or names)")
    split: List[Any] = setting([], "[Alice, 12]: regrouped at a stricter threshold; the largest part keeps the id "
                               "and the name")
    move: Optional[dict] = setting(None, "{Alice: [12, 40], unsorted: [7], new: [3, 9]}: faces (by face id) to a "
                                   "cluster, to unsorted, or into one new cluster")
    enroll: bool = setting(False, "enrol the faces of every named cluster into the gallery index `index` (built "
                           "when missing, else added to), labelled by the cluster's name")


@dataclass
class ServeSection:
    host: str = setting("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = setting(8080, "TCP port", min=1, max=65535)
    index_root: str = setting("output/indexes", "one index folder per indexKey, kept across restarts")
    max_request_mb: float = setting(32.0, "largest request body in MB (413 beyond)", greater_than=0.0)
    max_images_per_request: int = setting(64, "imageLabelPairs per build/add request", min=1)
    max_request_pixels: int = setting(400_000_000, "pixels of all of a request's images together, read from their "
                                      "headers before any is decoded (413 beyond)", min=1)
    url_images: bool = setting(True, "accept http(s) URLs as images (fetched by the server)")
    url_timeout: float = setting(10.0, "seconds to fetch one image URL, redirects included", greater_than=0.0)
    api_key_file: Optional[str] = setting(None, "file of API keys, one a line (chmod 600): every /face-recognition-* "
                                          "call must send one (Authorization: Bearer KEY or X-API-Key: KEY); needed "
                                          "when host is not a loopback address")
    allowed_hosts: Optional[List[str]] = setting(None, "Host header values the service answers to; null = the "
                                                 "loopback names (localhost, 127.0.0.1, ::1) when host is loopback, "
                                                 "else any")
    url_allow_private: bool = setting(False, "also fetch image URLs that lead to loopback, private or link-local "
                                      "addresses (off: only public ones, so clients cannot reach the server's "
                                      "own network)")
    max_video_seconds: float = setting(120.0, "/face-recognition-video: longest clip (a longer one is refused when "
                                       "its header says so, else cut there)", greater_than=0.0)
    video_timeout: float = setting(120.0, "/face-recognition-video: seconds a clip may take (the answer is then "
                                   "marked partial)", greater_than=0.0)
    max_live_sessions: int = setting(8, "/face-recognition-live: sessions (live cameras) at once", min=1)
    live_idle_seconds: float = setting(30.0, "/face-recognition-live: a session without a frame this long ends",
                                       greater_than=0.0)
    shutdown_timeout: float = setting(30.0, "seconds in-flight requests get to finish on Ctrl-C / SIGTERM",
                                      min=0.0)


@dataclass
class ServingSection:
    visualize: bool = setting(True, "PaddleX's Serving.visualize: /face-recognition-infer returns the drawn image "
                              "unless the request says visualize=false")
    return_urls: Optional[bool] = setting(None, "PaddleX's Serving.return_urls: accepted; images are always returned "
                                          "inline (base64), never as URLs")


@dataclass
class PipelineConfig:
    pipeline_name: str = setting("face_recognition", "PaddleX's pipeline name", choices=("face_recognition",))
    index: Optional[str] = setting("output/gallery_index", "the gallery index folder: build_index writes it, "
                                   "recognize and predict search it (vector.index, id_map.yaml, meta.json); "
                                   "Index.backend=milvus: the collection's name")
    det_threshold: float = setting(0.6, "detection score threshold", min=0.0, max=1.0)
    rec_threshold: Optional[float] = setting(None, "cosine below which the best match is 'unknown'; null = the "
                                             "threshold the model's inference.yml records (FAR 1e-3, 1e-2 or best "
                                             "accuracy on its validation pairs), else 0.4", min=-1.0, max=1.0)
    rec_topk: int = setting(5, "gallery matches reported per face", min=1)
    SubModules: SubModulesSection = setting(SubModulesSection, "")
    Global: PipelineGlobal = setting(PipelineGlobal, "")
    Index: IndexSection = setting(IndexSection, "")
    Predict: PipelinePredict = setting(PipelinePredict, "")
    Video: VideoSection = setting(VideoSection, "")
    Cluster: ClusterSection = setting(ClusterSection, "")
    Serve: ServeSection = setting(ServeSection, "")
    Serving: ServingSection = setting(ServingSection, "")


PIPELINE_MARKERS = ("pipeline_name", "SubModules", "Det", "Rec", "Index", "Serve")

# Keys of the pipeline config before it took PaddleX's layout: a clear "renamed" error, not "unknown".
MOVED_KEYS = {
    "Global.model": "SubModules.Recognition.model_name",
    "Det.enable": "SubModules.Detection.enable",
    "Det.type": "SubModules.Detection.model_name (YuNet, or a PaddleX detector name with model_dir)",
    "Det.model_dir": "SubModules.Detection.model_dir",
    "Det.threshold": "det_threshold",
    "Det.margin": "SubModules.Detection.margin",
    "Det.min_size": "SubModules.Detection.min_size",
    "Rec.model_dir": "SubModules.Recognition.model_dir",
    "Rec.batch_size": "SubModules.Recognition.batch_size",
    "Rec.run_mode": "SubModules.Recognition.run_mode",
    "Index.dir": "index",
    "Index.top_k": "rec_topk",
    "Index.rec_threshold": "rec_threshold",
}


def schema_for(data):
    """The schema a YAML mapping is written for: a pipeline config has PaddleX's pipeline keys."""
    return PipelineConfig if any(k in data for k in PIPELINE_MARKERS) else ModelConfig


# --------------------------------------------------------------------------- walking the schema
def leaf_fields(schema, prefix=""):
    """[(dotted key, dataclass field)] of every leaf of a schema, in declaration order."""
    out = []
    for f in fields(schema):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if is_dataclass(f.type):
            out.extend(leaf_fields(f.type, key))
        else:
            out.append((key, f))
    return out


def section_keys(schema, prefix=""):
    """Dotted keys of every section (nested dataclass) of a schema."""
    out = []
    for f in fields(schema):
        if is_dataclass(f.type):
            key = f"{prefix}.{f.name}" if prefix else f.name
            out.append(key)
            out.extend(section_keys(f.type, key))
    return out


def default_of(f):
    if f.default is not MISSING:
        return f.default
    return f.default_factory()


def type_name(tp):
    """'int', 'float', 'bool', 'str', 'int or null', 'list of str', 'str or list of str'."""
    if tp is Any:
        return "str or list of str"
    if tp is dict:
        return "mapping or file path"
    origin = get_origin(tp)
    if origin is list:
        return f"list of {type_name(get_args(tp)[0])}"
    if origin is not None and type(None) in get_args(tp):  # Optional[X]
        inner = [a for a in get_args(tp) if a is not type(None)][0]
        return f"{type_name(inner)} or null"
    return getattr(tp, "__name__", str(tp))


def allowed_text(f):
    """What a field accepts beyond its type, for messages and the docs: '>= 1', '0 to 1', 'one of ...'."""
    m = f.metadata
    if m.get("choices") is not None:
        return "one of " + ", ".join(str(c) for c in m["choices"])
    lo, hi, gt = m.get("min"), m.get("max"), m.get("greater_than")
    if m.get("per_core"):
        return f"{lo:g} to {m['per_core']} x cores" if lo is not None else f"<= {m['per_core']} x cores"
    if gt is not None:
        return f"> {gt:g}" if hi is None else f"> {gt:g} and <= {hi:g}"
    if lo is not None and hi is not None:
        return f"{lo:g} to {hi:g}"
    if lo is not None:
        return f">= {lo:g}"
    if hi is not None:
        return f"<= {hi:g}"
    return ""
