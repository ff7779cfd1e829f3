"""Throughput of the ways the bridge could run a .tflite model on this machine, measured in one run.

    .venv/bin/python -m scripts.embedded_inference [--seconds 2] [--repeats 3] [--models digits mobilenet]
                                                   [--batches 32 1]

For each model (serving/export_model.py's model.tflite, exported and cached by scripts.local_stack) and batch
size, images per second of:

    1 interpreter         EmbeddedBackend(instances=1), one calling thread: the baseline
    2 interpreters        EmbeddedBackend(instances=2), two calling threads
    num_threads=2         EmbeddedBackend(instances=1, num_threads=2), one calling thread
    2 x num_threads=2     EmbeddedBackend(instances=2, num_threads=2), two calling threads
    2 worker processes    two processes with one interpreter each, batches sent (pickled) by two threads

each with its ratio to the baseline, alone and with a thread decoding and resizing JPEGs beside it (the bridge's
other work; its decodes per second are printed too). Each figure is the best of --repeats runs, the modes taking
turns, so that other work on the machine (shown by the load averages printed first and last) lowers it less.
Then whether LiteRT releases the GIL while it runs: how fast a Python thread counts during back-to-back calls,
relative to idle (near 1 on 2+ idle cores: released; near 0: held), and the memory one interpreter holds after
a batch.
"""

from __future__ import annotations

import argparse
import functools
import io
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Self

import numpy as np
from PIL import Image

from bridge.model.backend import ModelTarget
from bridge.model.embedded_backend import EmbeddedBackend

Call = Callable[[np.ndarray], object]


def tflite_path(model: str) -> Path:
    from scripts.local_stack import exported_model

    return exported_model(model) / model / "1" / "model.tflite"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def backend_calls(path: Path, instances: int, num_threads: int | None) -> tuple[list[Call], Callable[[], None]]:
    """One call per calling thread (instances of them), all on one EmbeddedBackend."""
    backend = EmbeddedBackend(path, ModelTarget(path.stem), instances=instances, num_threads=num_threads)
    signature = backend.signature()

    def call(batch: np.ndarray) -> object:
        return backend.predict_images(signature, batch, with_labels=False)

    return [call] * instances, backend.close


def _worker(path: str, connection: Connection) -> None:
    """A worker process: one interpreter, answering each batch it receives with its scores."""
    backend = EmbeddedBackend(Path(path), ModelTarget(Path(path).stem))
    signature = backend.signature()
    while (batch := connection.recv()) is not None:
        connection.send(backend.predict_images(signature, batch, with_labels=False).outputs[signature.scores_output])


def worker_calls(path: Path, count: int) -> tuple[list[Call], Callable[[], None]]:
    """One call per worker process; each sends its batch down a pipe (pickled) and waits for the scores."""
    context = multiprocessing.get_context("spawn")  # no fork of a process that runs threads
    pipes = [context.Pipe() for _ in range(count)]
    workers = [context.Process(target=_worker, args=(str(path), child), daemon=True) for _, child in pipes]
    for worker in workers:
        worker.start()

    def caller(connection: Connection) -> Call:
        def call(batch: np.ndarray) -> object:
            connection.send(batch)
            return connection.recv()
        return call

    def stop() -> None:
        for parent, _ in pipes:
            parent.send(None)
        for worker in workers:
            worker.join(10)

    return [caller(parent) for parent, _ in pipes], stop


class JpegDecoder:
    """A thread decoding a 640x480 JPEG and resizing it to 224x224 over and over, as the bridge's decoders do."""

    def __init__(self) -> None:
        noise = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, format="JPEG", quality=90)
        self.jpeg = buffer.getvalue()
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with Image.open(io.BytesIO(self.jpeg)) as image:
                image.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
            self.count += 1

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def throughput(calls: list[Call], batch: np.ndarray, seconds: float) -> float:
    """Images per second with each call run back to back in its own thread for `seconds`."""
    for call in calls:  # warm up: interpreters allocate for the batch size on their first call
        call(batch)
    done = [0] * len(calls)
    start = threading.Barrier(len(calls) + 1)
    deadline = [0.0]

    def run(index: int) -> None:
        start.wait()
        while time.monotonic() < deadline[0]:
            calls[index](batch)
            done[index] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    deadline[0] = began + seconds
    start.wait()
    for thread in threads:
        thread.join()
    return sum(done) * len(batch) / (time.monotonic() - began)


def measure(make: Callable[[], tuple[list[Call], Callable[[], None]]], batch: np.ndarray,
            seconds: float) -> tuple[float, float, float]:
    """(images/s alone, images/s with a JPEG decoder beside, decodes/s beside it)."""
    calls, stop = make()
    try:
        alone = throughput(calls, batch, seconds)
        with JpegDecoder() as decoder:
            began = time.monotonic()
            busy = throughput(calls, batch, seconds)
            decodes = decoder.count / (time.monotonic() - began)
    finally:
        stop()
    return alone, busy, decodes


def gil_ratio(path: Path, batch: np.ndarray, seconds: float = 1.0) -> float:
    """A counting thread's rate during back-to-back calls, relative to its idle rate."""
    calls, stop = backend_calls(path, 1, None)
    calls[0](batch)
    count, running = [0], [True]

    def spin() -> None:
        while running[0]:
            count[0] += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    time.sleep(0.2)
    before = count[0]
    time.sleep(seconds)
    idle = count[0] - before
    before, began = count[0], time.monotonic()
    while time.monotonic() - began < seconds:
        calls[0](batch)
    busy = count[0] - before
    running[0] = False
    spinner.join()
    stop()
    return busy / idle


def interpreter_mb(path: Path, batch: np.ndarray) -> float:
    """RSS growth from one more interpreter that ran one batch."""
    before = rss_mb()
    calls, stop = backend_calls(path, 1, None)
    calls[0](batch)
    grown = rss_mb() - before
    stop()
    return grown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement; the best is shown")
    parser.add_argument("--models", nargs="+", default=["digits", "mobilenet"])
    parser.add_argument("--batches", nargs="+", type=int, default=[32, 1])
    args = parser.parse_args()
    modes: dict[str, Callable[[Path], tuple[list[Call], Callable[[], None]]]] = {
        "1 interpreter": lambda path: backend_calls(path, 1, None),
        "2 interpreters": lambda path: backend_calls(path, 2, None),
        "num_threads=2": lambda path: backend_calls(path, 1, 2),
        "2 x num_threads=2": lambda path: backend_calls(path, 2, 2),
        "2 worker processes": lambda path: worker_calls(path, 2),
    }
    print(f"{multiprocessing.cpu_count()} CPUs, best of {args.repeats} x {args.seconds:g} s, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'model':<10} {'batch':>5}  {'mode':<19} {'img/s':>8} {'ratio':>6}   {'+decode img/s':>13} {'ratio':>6} "
          f"{'decodes/s':>9}")
    for model in args.models:
        path = tflite_path(model)
        size = EmbeddedBackend(path, ModelTarget(model)).signature().image_size
        assert size is not None
        for count in args.batches:
            batch = np.random.default_rng(0).integers(0, 256, (count, *size, 3), dtype=np.uint8)
            best = {mode: (0.0, 0.0, 0.0) for mode in modes}
            for _ in range(args.repeats):
                for mode, make in modes.items():
                    figures = measure(functools.partial(make, path), batch, args.seconds)
                    best[mode] = tuple(max(pair) for pair in zip(best[mode], figures))
            baseline = best["1 interpreter"][0]
            for mode, (alone, busy, decodes) in best.items():
                print(f"{model:<10} {count:>5}  {mode:<19} {alone:>8.0f} {alone / baseline:>6.2f}   "
                      f"{busy:>13.0f} {busy / baseline:>6.2f} {decodes:>9.0f}", flush=True)
        largest = np.zeros((max(args.batches), *size, 3), np.uint8)
        print(f"{model}: GIL: a Python thread counts at {gil_ratio(path, batch):.2f} x its idle rate during calls "
              f"(batch {count}); one interpreter after a batch of {len(largest)}: "
              f"{interpreter_mb(path, largest):.0f} MB", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
