"""Past one machine, on an existing engine: Ray Data runs the same per-file functions that run
locally (fingerprinting, classification) on a Ray cluster; the results stream back, in input
order, to this process, which writes them exactly as a local run would. No networking of ours.

Optional: ``pip install 'simpsons-classifier[distributed]'``. The files must be readable at the
same paths on every node (a shared file system); the model file is shipped to the workers.
``--ray local`` starts a Ray instance on this machine, ``--ray auto`` joins the cluster this
machine belongs to, ``--ray ray://HOST:10001`` reaches a remote one.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from runtime.errors import SimpsonsError

BATCH_FILES = 64  # files per Ray task


class ClusterError(SimpsonsError):
    """Ray is missing or its cluster cannot be reached."""


def connect(address: str, workers: int | None = None):
    """The ``ray`` module, initialised once per process; a clear one-line error otherwise."""
    try:
        import ray
    except ImportError:
        raise ClusterError("--ray needs the [distributed] extra: pip install 'simpsons-classifier[distributed]'") from None
    reachable(address)
    if ray.is_initialized():
        return ray
    options = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray's own multi-line warnings; the error below says it in one
            if address == "local":
                ray.init(num_cpus=workers or os.cpu_count(), **options)
            else:
                ray.init(address=address, **options)
    except Exception as e:  # noqa: BLE001 - ray raises ConnectionError, RuntimeError, ValueError... for an unreachable cluster
        raise ClusterError(f"--ray {address}: cannot reach a Ray cluster ({str(e).splitlines()[0][:160]})") from None
    return ray


def reachable(address: str, timeout: float = 5.0) -> None:
    """A host:port address must accept a connection: Ray itself would wait for minutes."""
    if address in ("local", "auto"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except ValueError:
        raise ClusterError(f"--ray {address}: expected local, auto, HOST:PORT or ray://HOST:PORT") from None
    except OSError as e:
        raise ClusterError(f"--ray {address}: cannot reach a Ray cluster ({e.strerror or e})") from None


def ordered_map(address: str, rows: list[dict], make_task: Callable[[], Callable[[list[dict]], list[dict]]],
                workers: int | None = None, schema=None) -> Iterator[dict]:
    """``task(batch of rows) -> result rows`` over ``rows`` on the cluster, results in input
    order. ``make_task`` runs once per Ray worker (an actor), so a model loads once per worker;
    ``schema`` (pyarrow) types the results where inference would not (unsigned 64-bit hashes)."""
    ray = connect(address, workers)
    import pyarrow as pa

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its progress chatter would bury our lines

    class Task:
        def __init__(self) -> None:
            self.task = make_task()

        def __call__(self, batch: pa.Table) -> pa.Table:
            return pa.Table.from_pylist(self.task(batch.to_pylist()), schema=schema)

    size = max(1, int(ray.cluster_resources().get("CPU", 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Ray 2.60 routes max_restarts through a deprecated argument
        dataset = ray.data.from_items(rows).map_batches(Task, batch_size=BATCH_FILES, batch_format="pyarrow", concurrency=size,
                                                        max_restarts=0)  # a failed worker fails the run, loudly
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        yield from batch.to_pylist()


class _Classify:
    """A worker's classifier: the model arrives as bytes (no shared model path needed)."""

    def __init__(self, model: bytes, options: dict):
        from runtime.classifier import Classifier

        handle, path = tempfile.mkstemp(suffix=".onnx")
        with os.fdopen(handle, "wb") as f:
            f.write(model)
        self.top_k, self.batch_size = options.pop("top_k"), options.pop("batch_size")
        self.classifier = Classifier(path, device="cpu", threads=1, **options)

    def __call__(self, rows: list[dict]) -> list[dict]:
        paths = [os.fsdecode(r["path"]) for r in rows]  # bytes on the way: any file name survives Arrow
        results = self.classifier.iter_predict(paths, top_k=self.top_k, batch_size=self.batch_size)
        return [r.row() for r in results]


def classify(address: str, files: list[Path], model: Path, top_k: int, batch_size: int, unknown_threshold: float | None,
             unknown: bool) -> Iterator[dict]:
    """Prediction rows for ``files`` computed on the cluster, as ``Result.row()`` gives them."""
    data = model.read_bytes()
    options = {"top_k": top_k, "batch_size": batch_size, "unknown_threshold": unknown_threshold, "unknown": unknown}
    yield from ordered_map(address, [{"path": os.fsencode(f)} for f in files], lambda: _Classify(data, dict(options)))
