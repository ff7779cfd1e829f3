"""Decode and resize images in worker processes, for when one core's worth of decoding is not enough.

The pool prepares exactly what a Preprocessor would (each worker runs one); the bridge's threads only hand
bytes over and take pixels back. Each worker decodes one image at a time, so decoding holds at most
processes x max_pixels x 16 bytes. A worker that dies while decoding (a decoder crash, the kernel's OOM
killer) or takes longer than `timeout` fails only that image, with an ImageError; the pool is then replaced.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from bridge.errors import ImageError
from bridge.images.preprocess import Preprocessor, ScaleSpec
from bridge.model.signature import ImageSignature

log = logging.getLogger(__name__)

_worker: Preprocessor | None = None  # the Preprocessor of this worker process


def _start_worker(signature: ImageSignature, scaling: ScaleSpec, max_pixels: int) -> None:
    global _worker
    _worker = Preprocessor(signature, scaling, max_pixels=max_pixels, max_decodes=1)


def _prepare_in_worker(data: bytes) -> np.ndarray | bytes:
    assert _worker is not None
    return _worker.prepare(data)


class _WorkerLost(Exception):
    """The process decoding an image died (perhaps because of another image it was decoding)."""


class DecodePool:
    """A Preprocessor's prepare() run in `processes` worker processes. Safe to call from several threads."""

    def __init__(self, signature: ImageSignature, scaling: ScaleSpec = ScaleSpec(), *, processes: int,
                 max_pixels: int, timeout: float = 30.0,
                 work: Callable[[bytes], np.ndarray | bytes] = _prepare_in_worker) -> None:
        """timeout: the longest one image may take, queueing for a worker included.
        work: what a worker runs on each image (a module-level function; tests inject faults with it)."""
        self.processes = processes
        self.work = work
        self.max_pixels = max_pixels
        self.timeout = timeout
        self._arguments = (signature, scaling, max_pixels)
        self._lock = threading.Lock()
        self._alone = threading.Lock()
        self._pool = self._new_pool(processes)

    def _new_pool(self, processes: int) -> ProcessPoolExecutor:
        # forkserver: the bridge's threads and gRPC channels are never forked into a worker.
        return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("forkserver"),
                                   initializer=_start_worker, initargs=self._arguments)

    def prepare(self, data: bytes) -> np.ndarray | bytes:
        """What Preprocessor.prepare returns for `data`; ImageError if that fails, if the image kills its
        worker, or if it takes longer than the timeout."""
        pool = self._pool
        try:
            return self._run(pool, data)
        except _WorkerLost:
            self._replace(pool, "a decoding process died")
        # Every image in the pool fails when one worker dies: try this one again alone, to learn if it was it.
        with self._alone:
            alone = self._new_pool(1)
            try:
                return self._run(alone, data)
            except _WorkerLost:
                raise ImageError("cannot decode image: the decoding process died") from None
            finally:
                _kill(alone)

    def _run(self, pool: ProcessPoolExecutor, data: bytes) -> np.ndarray | bytes:
        try:
            return pool.submit(self.work, data).result(self.timeout)
        except BrokenProcessPool:
            raise _WorkerLost() from None
        except FutureTimeout:
            self._replace(pool, f"a decode took over {self.timeout:g} s")
            raise ImageError(f"cannot decode image: decoding took over {self.timeout:g} s") from None

    def _replace(self, broken: ProcessPoolExecutor, why: str) -> None:
        """Swap in a fresh pool (once, however many threads saw the broken one) and kill the old workers."""
        with self._lock:
            if self._pool is not broken:
                return
            log.warning("%s; starting new decoding processes", why)
            self._pool = self._new_pool(self.processes)
        _kill(broken)

    def close(self) -> None:
        """Stop the workers now (nothing is decoding when the pipeline closes, or it no longer matters)."""
        _kill(self._pool)


def _kill(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: a hung decode never returns by itself."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
