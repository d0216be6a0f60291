"""Logging to the console and to a log file under the output folder."""
import contextlib
import io
import logging
import logging.handlers
import os
import sys

LOGGER_NAME = "facefeat"
WARNINGS_LOGGER = "py.warnings"  # where logging.captureWarnings sends Python warnings


class _CurrentStdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is now (test runners and redirections swap it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def get_logger():
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = _CurrentStdoutHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def quiet_library_warnings():
    """Send Python warnings that libraries raise (Paddle's ccache, PIR and BatchNorm notes) to the
    run's log file (see log_to_file) instead of the console, which keeps our progress and results."""
    logging.captureWarnings(True)
    warn_log = logging.getLogger(WARNINGS_LOGGER)
    warn_log.propagate = False
    if not warn_log.handlers:
        # held until the run opens its log file (log_to_file writes them there), never printed
        warn_log.addHandler(logging.handlers.MemoryHandler(1000, flushLevel=logging.CRITICAL + 1))


@contextlib.contextmanager
def stderr_to_log(what):
    """Python-level writes to sys.stderr inside the block (a library's import-time banner, such as
    Paddle's OMP_NUM_THREADS note) go where library warnings go (see quiet_library_warnings)."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            yield
    finally:
        text = buf.getvalue().strip()
        if text:
            logging.getLogger(WARNINGS_LOGGER).warning(f"{what}: {text}")


def log_to_file(path):
    """Also write every log line (and captured library warnings) to `path`, appending: a resumed
    run keeps its history."""
    logger = get_logger()
    warn_log = logging.getLogger(WARNINGS_LOGGER)
    path = os.path.abspath(path)
    for h in logger.handlers:
        if isinstance(h, logging.FileHandler) and h.baseFilename == path:
            return logger
    for h in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(h)
        if h in warn_log.handlers:
            warn_log.removeHandler(h)
        h.close()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    for held in [h for h in warn_log.handlers if isinstance(h, logging.handlers.MemoryHandler)]:
        held.setTarget(handler)  # the warnings raised before this file existed
        held.flush()
        warn_log.removeHandler(held)
        held.close()
    warn_log.addHandler(handler)
    return logger
