"""`python -m engine -c CONFIG.yaml -o Global.mode=MODE ...`: the command line of an installed copy."""
import sys

from engine.cli import main

sys.exit(main())
