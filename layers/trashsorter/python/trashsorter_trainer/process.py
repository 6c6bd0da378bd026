"""The trainer process's settings for the C runtimes under PyTorch (standard library only, so that the
package can apply the first before torch loads).

Both were measured on the default local training (the 180 sample photos, 2 CPUs, back to back,
``python -m trashsorter_cli.trainer.bench``); see docs/local-training.md, "Process settings".
"""

from __future__ import annotations

import os
import sys

# glibc's mallopt() parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# blocks up to this size come from the heap (glibc's default maps each block over 128 KiB-32 MiB on its own)
HEAP_BLOCK_LIMIT = 256 * 2**20
# free memory at the heap's top is given back to the system only beyond this
HEAP_TRIM_THRESHOLD = 512 * 2**20


def let_idle_openmp_threads_sleep() -> None:
    """OpenMP threads without work sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``), unless the
    user chose a policy.

    PyTorch's CPU threads spin between parallel regions by default, on cores that the trainer's
    data-loader worker and its own Python code need. libgomp reads the variable once, when torch loads
    it: the package calls this on import, before any of its modules imports torch.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def keep_large_blocks_in_the_heap() -> bool:
    """Serve the network's activation buffers (tens to hundreds of MB on the CPU) from the heap and keep
    freed ones for the next batch; returns whether the C library took the settings (glibc only).

    glibc maps every block over its mmap threshold on its own and unmaps it when freed, so each batch's
    activations are fresh pages that the kernel faults in and zeroes: about 11 million page faults and
    a third of the CPU time of the default local training. Applies to the process and the data-loader
    workers it forks later.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # here, not at the top: importing the package (the start-training Lambda does) stays cheap

    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: another C library's mallopt differs
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK_LIMIT)) and bool(
        mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD)
    )
