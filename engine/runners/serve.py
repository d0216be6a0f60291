"""Global.mode=serve: the face recognition pipeline as an HTTP service (PaddleX's API) and a web page.

    python main.py -c configs/face_recognition/pipeline.yaml -o Global.mode=serve -o Serve.port=8080

FastAPI (engine.serving.app) under uvicorn. The model loads once, before the port accepts
requests; indexes live in Serve.index_root under their indexKey (engine.gallery.store), so a
restart keeps them. Ctrl-C or SIGTERM stops taking new connections and lets in-flight requests
finish (up to Serve.shutdown_timeout seconds). One process uses Global.num_threads cores for the
model; to use more cores run several processes on one Serve.index_root (each on its own port
behind a load balancer): updates are serialised across processes and every process sees the
others' indexes at the next request. With Index.backend=milvus the indexes are collections on
Index.uri instead, so replicas on several machines share them (engine.gallery.store.MilvusIndexStore).
"""
import os
import signal
import socket

import uvicorn

from engine.serving.app import app_from_config
from foundation.errors import UserError
from foundation.logger import get_logger, log_to_file


def bind(host, port):
    """A socket bound to host:port, not listening yet (connections are refused until listen(), so
    a client never waits on a port whose model is still loading); UserError naming the address
    when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}): another process uses the port, or the "
                        f"address is not this machine's; pick another with -o Serve.port=... / -o Serve.host=...") from None
    sock.set_inheritable(True)
    return sock


def _describe(index, name):
    if index is None:
        return f"nothing to search ({name or 'no index'} does not exist)"
    return f"{name}, {len(index)} faces of {len(index.labels)} people"


class _Server(uvicorn.Server):
    def handle_exit(self, sig, frame):
        if not self.should_exit:
            get_logger().info(f"{signal.Signals(sig).name}: no new connections; finishing the requests in flight")
        super().handle_exit(sig, frame)


def run(cfg):
    serve = cfg.Serve
    sock = bind(serve.host, serve.port)  # before the model loads: a taken port fails in a second
    os.makedirs(cfg.Global.output, exist_ok=True)
    log = log_to_file(os.path.join(cfg.Global.output, "serve.log"))
    app, pipeline, store = app_from_config(cfg)
    host = f"[{serve.host}]" if ":" in serve.host else serve.host
    log.info(f"serving face recognition on http://{host}:{serve.port} (model {pipeline.model.model_name}, "
             f"{pipeline.model.embedding_size}-d; rec_threshold {pipeline.rec_threshold:.3f} "
             f"({pipeline.rec_threshold_source}); {len(store.keys())} index(es) in {store.root}; without an "
             f"indexKey: {_describe(pipeline.index, cfg.index)}); web page at /, "
             f"API docs at /docs; Ctrl-C stops")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=serve.shutdown_timeout or None)
    # After a graceful stop uvicorn re-raises the signal, so the process ends as the signal asks
    # (SIGTERM: killed by it, exit status 143 in a shell; Ctrl-C: 130), as a supervisor expects.
    sock.listen(2048)  # the model is loaded: accept connections from now on
    _Server(config).run(sockets=[sock])
    return 0
