"""Process set-up shared by the runners: CPU threads, device and seeds.

Paddle forces OMP_NUM_THREADS=1 when it is unset, so the thread count is set here
deliberately, before Paddle is imported where possible and through Paddle's own call after.
"""
import os
import random

import numpy as np


def cpuinfo_field(key):
    """A field of the first CPU in /proc/cpuinfo ('vendor_id', 'model name', ...) or '' when unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == key:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cache_root():
    """Where compiled helpers (fused kernels, MKL shim) are kept between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "paddle_face_feature")


def num_threads_from(cfg_value):
    n = int(cfg_value or 0)
    return n if n > 0 else (os.cpu_count() or 1)


def set_threads(n):
    """Use `n` CPU threads for OpenMP/MKL/OpenBLAS (and Paddle, if imported)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    import sys

    if "paddle" in sys.modules:
        from paddle.base import core

        core.set_num_threads(n)
    try:
        import cv2

        # OpenCV's own thread pool does not survive fork: a forked data-loader worker that
        # touches it hangs. Images are processed in parallel at the image level instead (thread
        # and process pools), so OpenCV runs its functions sequentially (0 = no threading).
        cv2.setNumThreads(0)
    except ImportError:
        pass


def parse_device(device):
    """'cpu' | 'gpu' | 'gpu:0' | 'gpu:0,1' -> ('cpu'|'gpu', [ids])."""
    device = str(device or "cpu").strip().lower()
    kind, _, ids = device.partition(":")
    if kind not in ("cpu", "gpu"):
        from engine.errors import ConfigError

        raise ConfigError(f"Global.device '{device}' is not one of cpu, gpu, gpu:0, gpu:0,1,...")
    id_list = [int(i) for i in ids.split(",") if i.strip() != ""] if ids else ([0] if kind == "gpu" else [])
    return kind, id_list


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    import paddle

    paddle.seed(seed)


def setup_paddle(cfg, single_device=True):
    """Threads, device and seed from cfg.Global; returns the paddle device string in use."""
    from engine.config import get

    set_threads(num_threads_from(get(cfg, "Global.num_threads", 0)))
    import paddle

    kind, ids = parse_device(get(cfg, "Global.device", "cpu"))
    if kind == "gpu":
        if not paddle.is_compiled_with_cuda():
            from engine.errors import ConfigError

            raise ConfigError(
                f"Global.device={cfg.Global.device} but this Paddle build has no CUDA: "
                "install paddlepaddle-gpu or use -o Global.device=cpu"
            )
        local_rank = int(os.environ.get("PADDLE_LOCAL_RANK", os.environ.get("FLAGS_selected_gpus", "0").split(",")[0] or 0))
        dev = f"gpu:{ids[local_rank] if single_device and local_rank < len(ids) else ids[0]}"
    else:
        dev = "cpu"
    paddle.set_device(dev)
    seed_everything(int(get(cfg, "Global.seed", 42)))
    return dev
