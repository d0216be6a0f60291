"""Global.mode=train: train a face feature model with an ArcFace head, as the PaddleX module does.

Outputs under Global.output (SPEC.md "Training outputs"):
    config.yaml            the full merged config of the run
    train.log              every log line (appended across resumes)
    vdl/                   VisualDL scalars: train/loss, train/lr, train/ips, eval/acc
    train_result.json      model_name, paths (relative to the output dir), models{last_1..last_5, best},
                           done_flag (true only after a clean end)
    latest/                latest.pdparams, .pdopt, .pdstates (+ inference/ at the end)
    best_model/            the checkpoint with the best val accuracy (+ inference/)
    epoch_N/               every Train.save_interval epochs, with inference/; the newest 5 are kept
Every checkpoint folder is built under a temporary name and swapped in whole, so a kill at any
moment leaves the previous checkpoint complete.

Several devices (Global.device=gpu:0,1,... or Train.cpu_processes > 1 on CPU) re-launch this
mode through `python -m paddle.distributed.launch`; rank 0 alone writes logs and checkpoints.
"""
from engine.training.distributed import launch_distributed, requested_processes, world_info
from engine.training.trainer import Trainer, cpu_speed_notes


def run(cfg):
    kind, ids, nprocs = requested_processes(cfg)
    speed_notes = []
    if kind == "cpu":
        speed_notes = cpu_speed_notes(cfg)  # sets the threads too, after the MKL shim has loaded
    _, world = world_info()
    if nprocs > 1 and world == 1:
        return launch_distributed(cfg, kind, ids, nprocs)
    return Trainer(cfg, speed_notes).run()
