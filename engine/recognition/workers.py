"""Worker processes that read, detect, align and embed for the face recognition pipeline, so that
`Global.num_threads=N` keeps N cores busy on a folder of photos.

Why processes: Paddle Inference holds the GIL for the whole of predictor.run() (its Python binding
does not release it: a Python thread ran at a tenth of its speed while the predictor ran), so a
thread that decodes or detects waits out every forward pass. Each worker is a fresh interpreter
started with `python -c` (multiprocessing would run a user's script again in every worker when
it lacks an `if __name__ == "__main__"` guard) that builds its own detector and model from a
WorkerRecipe, each on 1 thread. The pipeline's process hands out blocks of images; a worker reads,
detects, aligns and embeds a whole block (its crops never cross a pipe), exactly as the pipeline's
process does a block alone (so the features are the same), and the pipeline searches and yields in
order.

The choice between workers and the pipeline's own process is made in one place, `plan_workers`.
A worker exits when its task pipe closes, so it never outlives the process that started it.
"""
import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from engine.inference.model import InferenceModel
from engine.recognition.stages import FaceStages
from foundation.errors import UserError
from foundation.logger import get_logger
from foundation.runtime import PACKAGES_ROOT, set_threads
from models.face_detector import build_detector

# Two workers (fresh interpreters importing Paddle and building the model) start in 0.7-1.0 s and
# then save about 2.6 ms a photo on predict, 2.4 ms on build_index (docs/speed.md, 2-core Zen 5):
# they pay from about 350 photos. Shorter calls run in the pipeline's own process.
MIN_IMAGES_TO_START = 500
# Tasks handed to a worker ahead of its results, so it never waits for the pipeline's process.
TASKS_PER_WORKER = 2
TASK_KINDS = ("faces_embedded", "gallery_faces_embedded")  # the FaceStages methods a worker runs


def plan_workers(num_threads, device_kind, images, running, rebuildable=True):
    """(worker processes for a call of `images` images, why): 0 means the pipeline's own process
    does the work (with its model on every thread)."""
    if device_kind != "cpu":
        return 0, f"device {device_kind}: the model runs on it from this process"
    if num_threads < 2:
        return 0, "Global.num_threads=1"
    if not rebuildable:
        return 0, "the pipeline was built from objects, not from a config: workers could not rebuild them"
    if os.name != "posix":
        return 0, "worker processes need POSIX pipes"
    if not running and images < MIN_IMAGES_TO_START:
        return 0, (f"{images} image(s): worker processes start for calls of {MIN_IMAGES_TO_START} or more "
                   "(or after start_workers())")
    return num_threads, f"Global.num_threads={num_threads}"


@dataclass(frozen=True)
class WorkerRecipe:
    """What a worker needs to build the pipeline's detector and model again, on 1 thread each."""
    detector: dict  # models.face_detector.build_detector's arguments
    model_dir: str
    backend: str  # the engine the pipeline's model runs: paddle, openvino or onnxruntime
    precision: str
    run_mode: str
    margin: float
    max_image_pixels: int

    @classmethod
    def of(cls, model, detector_settings, margin, max_image_pixels):
        """The recipe of a built model (the same engine and precision) and the detector's settings."""
        return cls(dict(detector_settings, num_threads=1), model.model_dir, model.backend, model.precision,
                   model.run_mode, float(margin), int(max_image_pixels))

    def build_model(self):
        if self.backend == "paddle":
            return InferenceModel(self.model_dir, num_threads=1, run_mode=self.run_mode)
        return InferenceModel(self.model_dir, num_threads=1, use_hpip=True,
                              hpi_config={"backend": self.backend, "precision": self.precision, "num_threads": 1})


class WorkerError(UserError):
    """A worker process failed or stopped; the message carries its traceback or exit code."""


# --------------------------------------------------------------------------- inside a worker
def build_stages(recipe):
    """A worker's FaceStages: the recipe's detector and model, built in the worker."""
    return FaceStages(build_detector(**recipe.detector), recipe.build_model(), recipe.margin,
                      recipe.max_image_pixels)


def serve(task_fd, result_fd):
    """A worker's life: read the recipe, build, answer ("ready", what it runs), then run tasks
    (ticket, kind, args) -> (ticket, "ok" | "error", value) until the task pipe closes."""
    set_threads(1)  # OpenCV sequential, Paddle's math on 1 thread
    get_logger().setLevel(logging.WARNING)  # the pipeline's process already said what the model is
    tasks, results = Connection(task_fd, writable=False), Connection(result_fd, readable=False)
    try:
        stages = build_stages(tasks.recv())
    except Exception as e:  # noqa: BLE001 - reported to the pipeline, which runs without workers
        results.send(("failed", f"{type(e).__name__}: {e}"))
        os._exit(1)
    results.send(("ready", stages.model.describe()))
    while True:
        try:
            ticket, kind, args = tasks.recv()
        except EOFError:  # the pipeline closed the pool, or its process is gone
            break
        try:
            reply = (ticket, "ok", getattr(stages, kind)(*args))
        except Exception:  # noqa: BLE001 - the pipeline raises it with this traceback
            reply = (ticket, "error", traceback.format_exc())
        try:
            results.send(reply)
        except OSError:
            break
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: Paddle's predictor destructors add nothing here


# --------------------------------------------------------------------------- the pipeline's side
class WorkerPool:
    """`workers` worker processes built from one recipe; tasks go to the least busy one and their
    results are collected by ticket. Not thread-safe: one pipeline, one thread.

        pool = WorkerPool(recipe, 2)
        for value in pool.ordered(("faces_embedded", args) for args in ...): ...   # in order, bounded ahead
    """

    def __init__(self, recipe, workers, start_timeout=300.0):
        self.workers = int(workers)
        self._procs, self._senders, self._send_queues, self._results = [], [], [], []
        self._in_flight = [0] * self.workers
        self._queued = deque()
        self._done = {}  # ticket -> (status, value), until taken
        self._sent, self._forgotten = set(), set()  # tickets at a worker; those whose result is dropped
        self._next_ticket = 0
        self.closed = False
        start = time.perf_counter()
        try:
            for _ in range(self.workers):
                self._spawn(recipe)
            self.description = self._await_ready(start_timeout)
        except BaseException:
            self.close()
            raise
        self.start_seconds = time.perf_counter() - start
        # a pool dropped without close() still lets its workers go (they exit when their pipe closes)
        self._finalizer = weakref.finalize(self, _stop, self._send_queues, self._senders, self._procs, self._results)

    def _spawn(self, recipe):
        task_read, task_write = os.pipe()
        result_read, result_write = os.pipe()
        # library warnings at import (Paddle's ccache note) go nowhere, as in the pipeline's process
        code = (f"import sys; sys.path.insert(0, {PACKAGES_ROOT!r}); "
                "from foundation.logger import quiet_library_warnings; quiet_library_warnings(); "
                f"from engine.recognition.workers import serve; serve({task_read}, {result_write})")
        # the thread counts this process set for itself (Global.num_threads) would size the
        # worker's OpenMP pool when Paddle loads; a worker runs on 1 thread
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        try:
            # a session of its own: Ctrl-C reaches the pipeline's process, which closes the pool
            proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(task_read, result_write), env=env,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            os.close(task_write)
            os.close(result_read)
            raise
        finally:
            os.close(task_read)
            os.close(result_write)
        tasks = Connection(task_write, readable=False)
        send_queue = queue.Queue()
        # sends go through a thread: a large task must not block this process while the worker is
        # itself blocked sending a large result back
        sender = threading.Thread(target=_send_loop, args=(tasks, send_queue), daemon=True,
                                  name=f"pipeline-worker-{proc.pid}")
        sender.start()
        send_queue.put(_packed(recipe))
        self._procs.append(proc)
        self._senders.append(sender)
        self._send_queues.append(send_queue)
        self._results.append(Connection(result_read, writable=False))

    def _await_ready(self, timeout):
        waiting, described = set(range(self.workers)), ""
        deadline = time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            ready = wait([self._results[i] for i in waiting], max(0.0, left))
            if not ready:
                raise WorkerError(f"pipeline worker processes did not start within {timeout:.0f} s")
            for conn in ready:
                i = self._results.index(conn)
                status, text = self._receive(i)
                if status != "ready":
                    raise WorkerError(f"a pipeline worker process could not build the model: {text}")
                waiting.discard(i)
                described = text
        return described

    def _receive(self, i):
        try:
            return self._results[i].recv()
        except (EOFError, OSError):
            proc = self._procs[i]
            try:
                code = proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
            self.close()
            raise WorkerError(f"pipeline worker process {proc.pid} stopped (exit code {code}); "
                              "the run stops (Global.num_threads=1 runs without workers)") from None

    # ------------------------------------------------------------------ tasks
    def submit(self, kind, *args):
        """Queue a task; returns its ticket."""
        if self.closed:
            raise WorkerError("the pipeline's worker processes are closed")
        if kind not in TASK_KINDS:
            raise ValueError(f"unknown worker task '{kind}' (one of {', '.join(TASK_KINDS)})")
        ticket = self._next_ticket
        packed = _packed((ticket, kind, args))  # here, so that a value that cannot be sent fails the caller
        self._next_ticket += 1
        self._queued.append((ticket, packed))
        self._dispatch()
        return ticket

    def result(self, ticket):
        """`ticket`'s value (waiting for it); WorkerError with the worker's traceback when the task raised."""
        while ticket not in self._done:
            self._pump()
        status, value = self._done.pop(ticket)
        if status == "error":
            raise WorkerError(f"a pipeline worker process failed:\n{value}")
        return value

    def forget(self, tickets):
        """Drop the results of `tickets` (a caller that stopped early): queued ones are not sent."""
        tickets = set(tickets)
        kept = [t for t in self._queued if t[0] not in tickets]
        self._queued.clear()
        self._queued.extend(kept)
        for ticket in tickets:
            self._done.pop(ticket, None)
            if ticket in self._sent:
                self._forgotten.add(ticket)

    def ordered(self, tasks, ahead):
        """Yield the values of `tasks` ((kind, args) pairs) in their order, with at most `ahead`
        submitted before their value is taken (what bounds the images held)."""
        tickets = deque()
        tasks = iter(tasks)
        try:
            while True:
                while len(tickets) < ahead:
                    task = next(tasks, None)
                    if task is None:
                        break
                    tickets.append(self.submit(task[0], *task[1]))
                if not tickets:
                    return
                yield self.result(tickets.popleft())
        finally:
            if tickets and not self.closed:
                self.forget(tickets)

    def _dispatch(self):
        while self._queued:
            i = min(range(self.workers), key=self._in_flight.__getitem__)
            if self._in_flight[i] >= TASKS_PER_WORKER:
                return
            ticket, packed = self._queued.popleft()
            self._in_flight[i] += 1
            self._sent.add(ticket)
            self._send_queues[i].put(packed)

    def _pump(self):
        """Take the results that have arrived (waiting until one does) and hand out queued tasks to
        the workers they freed."""
        self._dispatch()
        busy = [self._results[i] for i in range(self.workers) if self._in_flight[i]]
        if not busy:
            raise WorkerError("waiting for a result no worker is computing (a bug in the pipeline)")
        for conn in wait(busy):
            i = self._results.index(conn)
            ticket, status, value = self._receive(i)
            self._in_flight[i] -= 1
            self._sent.discard(ticket)
            if ticket in self._forgotten:
                self._forgotten.discard(ticket)
            else:
                self._done[ticket] = (status, value)
        self._dispatch()

    # ------------------------------------------------------------------ life
    def close(self):
        """Stop the workers: their task pipes close, they exit; one that does not is killed."""
        if self.closed:
            return
        self.closed = True
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer.detach()
        _stop(self._send_queues, self._senders, self._procs, self._results)


def _stop(send_queues, senders, procs, results):
    """Close the workers' pipes and wait for them to exit (killing one that does not)."""
    for conn in results:  # first: a worker blocked sending a result nobody takes gets an error and exits
        conn.close()
    for q in send_queues:
        q.put(None)
    for sender in senders:
        sender.join(timeout=10)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _packed(value):
    """`value` pickled as Connection.recv reads it back in the worker."""
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _send_loop(conn, send_queue):
    """A worker's task pipe, fed with pickled tasks from `send_queue` until None, then closed (the
    worker then exits)."""
    while True:
        packed = send_queue.get()
        if packed is None:
            break
        try:
            conn.send_bytes(packed)
        except OSError:  # the worker is gone: its result pipe tells the pool
            break
    conn.close()
