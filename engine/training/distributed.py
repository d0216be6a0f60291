"""Launching training in several processes (GPUs, or CPU processes over gloo) and the facts of
the current one (rank, world size). The launch re-runs the train mode under
`python -m paddle.distributed.launch`; every child reads the fully merged config from a file.
"""
import os
import subprocess
import sys

from engine.config.loader import save_config
from engine.config.output_folder import OutputLock
from engine.training.checkpoints import find_checkpoint, prepare_output_dir
from foundation.logger import get_logger
from foundation.runtime import PACKAGES_ROOT, parse_device

LAUNCHED_ENV = "FACEFEAT_LAUNCHED"  # set by the parent of a multi-process run
# The children's entry: the command line of this installation, wherever it lives.
_LAUNCHER = "import sys\nfrom engine.cli import main\nsys.exit(main())\n"


# --------------------------------------------------------------------------- small helpers
def world_info():
    """(rank, world size) of this process; (0, 1) outside a distributed launch."""
    return int(os.environ.get("PADDLE_TRAINER_ID", "0")), int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def requested_processes(cfg):
    """How many training processes Global.device / Train.cpu_processes ask for."""
    kind, ids = parse_device(cfg.Global.device)
    if kind == "gpu":
        return kind, ids, len(ids)
    return kind, ids, cfg.Train.cpu_processes  # >= 1, checked at load


# --------------------------------------------------------------------------- multi-process launch
def launch_command(cfg, config_path, kind, ids, nprocs, log_dir):
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--log_dir", log_dir]
    if kind == "gpu":
        cmd += ["--devices", ",".join(str(i) for i in ids)]
    else:
        cmd += ["--nproc_per_node", str(nprocs)]
    launcher = os.path.join(log_dir, "launch_main.py")
    with open(launcher, "w", encoding="utf-8") as f:
        f.write(_LAUNCHER)
    cmd += [launcher, "-c", config_path]
    return cmd


def launch_distributed(cfg, kind, ids, nprocs):
    """Re-run this mode in `nprocs` processes through paddle.distributed.launch; returns its exit code."""
    output_dir = os.path.abspath(cfg.Global.output)
    resume_path = cfg.Train.resume_path or None
    resume_files = find_checkpoint(resume_path) if resume_path else None
    prepare_output_dir(cfg, output_dir, resuming=bool(resume_files))
    os.makedirs(output_dir, exist_ok=True)
    with OutputLock(output_dir, "distributed training"):
        return _launch(cfg, kind, ids, nprocs, output_dir)


def _launch(cfg, kind, ids, nprocs, output_dir):
    log = get_logger()
    log_dir = os.path.join(output_dir, "dist_logs")
    os.makedirs(log_dir, exist_ok=True)
    config_path = os.path.join(log_dir, "launch_config.yaml")
    # the children read the fully merged config (with every -o applied) from this file
    save_config(cfg, config_path)
    cmd = launch_command(cfg, config_path, kind, ids, nprocs, log_dir)
    env = dict(os.environ, **{LAUNCHED_ENV: "1"})
    env["PYTHONPATH"] = PACKAGES_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log.info(f"launching {nprocs} training processes ({'GPUs ' + ','.join(map(str, ids)) if kind == 'gpu' else 'CPU, gloo'}); "
             f"per-rank logs in {log_dir}: {' '.join(cmd)}")
    code = subprocess.call(cmd, env=env, cwd=os.getcwd())
    if code != 0:
        log.error(f"distributed training failed with exit code {code}; see {log_dir}/workerlog.* "
                  f"and {os.path.join(output_dir, 'train.log')}")
    return code
