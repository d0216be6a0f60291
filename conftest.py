"""Session-wide test settings (the repository root's conftest: pytest loads it before tests/).

Why the garbage collector is frozen after every test module: Paddle (3.3) leaks Python objects
each time it builds a static program (paddle.jit.save, which every export and every training
epoch runs): its PIR op-callstack recorder (paddle/fluid/pybind/op_callstack_utils.cc) calls
traceback.extract_stack() for each operator and never releases the result, about 1,000
traceback.StackSummary and 25,000 FrameSummary objects per MobileFaceNet export. Nothing reaches
them and nothing can free them, but every full collection walks them all: over a whole run they
number millions, and the two full collections at the end (pytest's unraisable-exception check,
then the interpreter's own) took about 2.5 minutes in CI after the last test. Moving what is alive
after a module (collected first) into the permanent generation keeps those walks short; a module's
own garbage is still collected at its end. FACEFEAT_GC_REPORT=1 prints what the collector tracks
when the run ends.
"""
import collections
import gc
import os
import sys
import time

import pytest


@pytest.fixture(autouse=True, scope="module")
def _freeze_what_outlives_the_module():
    yield
    gc.collect()  # the module's own cycles (its fixtures are torn down by now)
    gc.freeze()


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config):
    if not os.environ.get("FACEFEAT_GC_REPORT"):
        return
    objs = gc.get_objects()
    counts = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objs)
    n = len(objs)
    del objs
    start = time.perf_counter()
    gc.collect()
    took = time.perf_counter() - start
    print(f"\ngc: {n} tracked objects ({gc.get_freeze_count()} frozen), a full collection {took:.2f} s; "
          f"most: {counts.most_common(6)}", file=sys.stderr)
