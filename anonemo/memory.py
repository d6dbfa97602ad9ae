"""The C allocator's settings for a job: freed activations stay in the process for the next step."""

from __future__ import annotations

import ctypes
import os
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit systems
MALLOC_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Have glibc keep freed blocks of up to 32 MiB instead of returning them to the kernel.

    By default glibc gives a training step's freed activations back (``munmap``, heap trimming),
    and the next step takes thousands of page faults to get them again (docs/performance.md, "Page
    faults"). Where the memory comes from changes no number. Returns whether the settings were made:
    not outside Linux, not with another C library, and not where the user set glibc's malloc
    variables or tunables.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if sys.platform != "linux" or "glibc.malloc." in tunables or any(name in os.environ for name in MALLOC_VARIABLES):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:  # a C library without mallopt (musl)
        return False
    return all(mallopt(option, value) == 1 for option, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX),  # blocks below it come from the heap, which is kept...
        (M_TRIM_THRESHOLD, 2**31 - 1),  # ...as it is, not trimmed back below 2 GiB of free top,
        (M_TOP_PAD, 64 << 20),  # and grown in steps of 64 MiB
    ))
