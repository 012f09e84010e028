"""Peak memory of a stretch of work: CUDA's peak allocation, or the process's peak resident size.

On a CPU the peak is the kernel's high-water mark of the process (VmHWM); writing 5 to
/proc/self/clear_refs resets it to the current resident size (Linux), so several measurements in
one process — a sweep, erases run one after another — each read their own peak."""
import resource
import sys

import torch


def proc_status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (``"VmRSS"``, ``"VmHWM"``; Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak(device) -> None:
    """Start the peak ``peak_bytes`` reads from now (where the platform allows: elsewhere it stays
    the process's peak since it started)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:   # (not Linux, or not allowed)
        pass


def peak_bytes(device) -> int:
    """The peak since ``reset_peak``: CUDA's peak allocation, or the process's peak resident size."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    try:
        return proc_status_kib("VmHWM") * 1024
    except (OSError, StopIteration):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux, bytes on macOS
        return rss if sys.platform == "darwin" else rss * 1024


__all__ = ["proc_status_kib", "reset_peak", "peak_bytes"]
