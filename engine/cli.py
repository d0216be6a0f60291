"""The command line: `python main.py -c CONFIG.yaml -o Global.mode=MODE -o Key.sub=value ...`

The same entry runs as `python main.py` from the repository, `python -m engine` and the
`facefeat` console script of an installed copy.

Exit codes: 0 success, 1 a run that failed on its input (dataset, weights, images),
2 a bad command line or config (checked before Paddle loads), 3 a mode that is not implemented,
130 interrupted.
"""
import argparse
import os
import sys

from engine.config.loader import load_config
from engine.config.output_folder import check_output_folder
from engine.config.schema import MODEL_MODES, PIPELINE_MODES
from engine.runners import runner_for
from foundation.errors import UserError
from foundation.logger import quiet_library_warnings, stderr_to_log
from foundation.runtime import num_threads_from, set_threads


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=f"Face feature toolkit. Modes (Global.mode): {', '.join(MODEL_MODES)}; "
                    f"with configs/face_recognition/pipeline.yaml: {', '.join(PIPELINE_MODES)}.",
    )
    parser.add_argument("-c", "--config", required=True, help="YAML config, e.g. configs/face_recognition/MobileFaceNet.yaml")
    parser.add_argument(
        "-o", "--override", action="append", nargs="+", default=[], metavar="Key.sub=value",
        help="override a config value (repeatable), e.g. -o Global.mode=train -o Train.epochs_iters=10",
    )
    args = parser.parse_args(argv)
    args.override = [item for group in args.override for item in group]
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.config, args.override)
        check_output_folder(cfg.Global.output)  # before anything is written there
        # Paddle's C++ log (glog) writes internal warnings straight to stderr, where no Python
        # redirect reaches them; keep errors only unless the user asks for more
        os.environ.setdefault("GLOG_minloglevel", "2")
        # before the runner's module loads Paddle: Paddle reads OMP_NUM_THREADS once, at import,
        # and its import-time warnings belong in the run's log file, not on the console
        set_threads(num_threads_from(cfg.Global.num_threads))
        quiet_library_warnings()
        with stderr_to_log(f"loading the {cfg.Global.mode} mode"):
            run = runner_for(cfg.Global.mode)
        return int(run(cfg) or 0)
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr)
        return e.exit_code
    except NotImplementedError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 3
    except OSError as e:  # a read-only folder, a full disk, a file gone: one line, not a traceback
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"Error: {e.strerror or e}{where}. Check the folder's permissions and free space, then run again",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
