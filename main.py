"""Command line entry: `python main.py -c CONFIG.yaml -o Global.mode=MODE -o Key.sub=value ...`

The config (YAML + overrides, checked against engine/config/schema.py) goes to the runner of
Global.mode (engine/<mode>.py). See engine/cli.py for the exit codes.
"""
import sys

from engine.cli import main, parse_args  # noqa: F401 - parse_args is part of the entry's API

if __name__ == "__main__":
    sys.exit(main())
