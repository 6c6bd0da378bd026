"""The trainer streams its photos: read from the channel folder as a pass needs them, never all in memory.

* :class:`Photos` is a torch ``Dataset`` of jobs: photo ``index`` with THE preprocessing (validation, the
  device), its left-right flip (the graph's flip-TTA branch), or one augmented view whose random choices
  (:class:`data.View`) were drawn in order in the trainer's process, so the views do not depend on how many
  workers decode them, nor in which order they finish.
* :func:`loader` reads it with data-loader workers (forked processes that read and decode the files while
  the network runs), in batches that never cross a segment (a pass of the same images the trainer
  batched alone).
* :func:`feature_pass` writes the frozen part's output of every job into a float32 ``.npy`` memory map on
  disk (the cached features or activations): the epochs read their batches from there.
* :func:`peak_memory_mb` is the process's peak resident memory (``ru_maxrss``) and its largest waited-for
  child's (the workers; they share most pages with the trainer, so the two are not added).
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from trashsorter_trainer.data import (
    Sample,
    View,
    apply_view,
    decode,
    preprocess,
    resize_short_side,
    short_side_size,
    upright_size,
)
from trashsorter_trainer.errors import TrainerError

# the short side of the photo the augmented views are cropped from (as the trainer always resized it)
SOURCE_SCALE = 1.15


def source_side(image_size: int) -> int:
    return round(image_size * SOURCE_SCALE)


def source_sizes(samples: Sequence[Sample], image_size: int) -> list[tuple[int, int]]:
    """The size of each photo once upright and resized for augmentation, from the file headers alone."""
    side = source_side(image_size)
    return [short_side_size(upright_size(s.data, s.key), side) for s in samples]


@dataclass(frozen=True)
class Job:
    """What :class:`Photos` makes of photo ``index``: THE preprocessing (``view`` None; ``flip`` mirrors it
    left-right) or the augmented ``view``."""

    index: int
    view: View | None = None
    flip: bool = False


class Photos(Dataset[np.ndarray]):
    """Jobs over photos, each read and decoded when asked for (float32 CHW 0..1)."""

    def __init__(self, samples: Sequence[Sample], jobs: Sequence[Job], image_size: int) -> None:
        self.samples = samples
        self.jobs = list(jobs)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, position: int) -> np.ndarray:
        job = self.jobs[position]
        sample = self.samples[job.index]
        image = decode(sample.data, sample.key)
        if job.view is not None:
            return apply_view(
                resize_short_side(image, source_side(self.image_size)), job.view, self.image_size
            )
        array = preprocess(image, self.image_size)
        return np.ascontiguousarray(array[:, :, ::-1]) if job.flip else array


class SegmentBatches(Sampler[list[int]]):
    """Consecutive batches of ``batch_size`` jobs that never cross a segment boundary (``segments`` are the
    lengths of the passes, in job order)."""

    def __init__(self, segments: Sequence[int], batch_size: int) -> None:
        self.segments = list(segments)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        start = 0
        for length in self.segments:
            for offset in range(0, length, self.batch_size):
                yield list(range(start + offset, start + min(offset + self.batch_size, length)))
            start += length

    def __len__(self) -> int:
        return sum(-(-length // self.batch_size) for length in self.segments)


def worker_count(requested: int, device: str) -> int:
    """Data-loader workers: ``requested`` when >= 0, else one per two cores on the CPU (the network needs
    the cores) and one per core up to 8 beside a GPU."""
    if requested >= 0:
        return requested
    cores = os.cpu_count() or 1
    return min(8, cores) if device == "cuda" else max(1, min(4, cores // 2))


def loader(
    photos: Photos, segments: Sequence[int], batch_size: int, workers: int, device: str = "cpu"
) -> DataLoader[np.ndarray]:
    """Batches of ``photos`` in job order (tensors [n, 3, size, size]), decoded by ``workers`` processes."""
    return DataLoader(
        photos,
        batch_sampler=SegmentBatches(segments, batch_size),
        num_workers=workers,
        pin_memory=device == "cuda",
        multiprocessing_context="fork" if workers and sys.platform == "linux" else None,
        # the workers' seeds come from this generator, not from torch's global one, which the training
        # draws from (dropout, a new classifier's weights): a pass over the photos leaves the training as is
        generator=torch.Generator().manual_seed(0),
    )


def batches(
    photos: Photos, segments: Sequence[int], batch_size: int, workers: int, device: str = "cpu"
) -> Iterator[torch.Tensor]:
    """The batches of :func:`loader`; a photo a worker could not decode fails with its own reason."""
    try:
        yield from loader(photos, segments, batch_size, workers, device)
    except TrainerError as exc:  # re-raised from a worker with its traceback: keep the reason
        lines = [line for line in str(exc).splitlines() if line.strip()]
        reason = lines[-1].split("TrainerError: ", 1)[-1] if lines else str(exc)
        raise TrainerError(reason) from None
    except RuntimeError as exc:  # torch's words for a worker the kernel's out-of-memory killer ended
        if "killed by signal" in str(exc):
            raise MemoryError(f"a data-loader worker was killed ({exc})") from exc
        raise


def feature_pass(
    frozen: Callable[[torch.Tensor], torch.Tensor],
    photos: Photos,
    segments: Sequence[int],
    batch_size: int,
    workers: int,
    path: Path,
    device: str = "cpu",
    tick: Callable[[int], None] | None = None,
    layout: torch.memory_format = torch.contiguous_format,
) -> np.ndarray:
    """``frozen`` (on ``device``, no gradient) over every job of ``photos`` -> a float32 memory map at
    ``path`` (one row per job, in job order); ``tick(n)`` after each batch of n photos. The batches are
    handed to ``frozen`` in ``layout`` (the model's memory format)."""
    bank: np.ndarray | None = None
    row = 0
    with torch.no_grad():
        for batch in batches(photos, segments, batch_size, workers, device):
            batch = batch.to(device, non_blocking=True, memory_format=layout)
            out = frozen(batch).float().cpu().numpy()
            if bank is None:
                shape = (len(photos), *out.shape[1:])
                bank = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
            bank[row : row + len(out)] = out
            row += len(out)
            if tick is not None:
                tick(len(out))
    if bank is None:
        raise TrainerError("no images to compute features of")
    return bank


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory (MiB) of this process and of its largest finished child (a loader worker)."""
    per_mib = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mib
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / per_mib
    return {"trainer": round(own, 1), "largest_worker": round(child, 1)}
