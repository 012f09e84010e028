"""Builds safemax._C against the torch that is already installed.

Install torch first, then `pip install --no-build-isolation .` (see README: with build
isolation pip would fetch a different, multi-GB torch just to compile against it).

SAFEMAX_CUDA=auto (default) builds the CUDA kernels when torch is a CUDA build and a CUDA
toolkit is found (CUDA_HOME); SAFEMAX_CUDA=1 insists on them, SAFEMAX_CUDA=0 skips them.
"""
import glob
import os
import sys

from setuptools import setup
import re
import shutil
import subprocess


def _resolve_cuda_home():
    """Point CUDA_HOME at the real toolkit when torch's guess (the folder above `which nvcc`)
    would be wrong, e.g. when nvcc on PATH is a wrapper script. nvcc itself knows its root."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return
    guess = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if os.path.exists(os.path.join(guess, "include", "cuda_runtime.h")):
        return
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", "probe.cu"], capture_output=True, text=True,
                             timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        return
    top = re.search(r"^#\$ TOP=(.+)$", out, re.MULTILINE)
    if top:
        os.environ["CUDA_HOME"] = os.path.realpath(top.group(1).strip())  # "<root>/bin/.."


_resolve_cuda_home()  # before cpp_extension reads CUDA_HOME at import

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - reached only in a misconfigured build
    sys.exit(
        "safemax: torch is not importable in the build environment.\n"
        "safemax compiles against the torch you run with. Install torch first, then build "
        "without isolation:\n    pip install torch\n    pip install --no-build-isolation ."
    )

HERE = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    flag = os.environ.get("SAFEMAX_CUDA", "auto").strip().lower()
    cuda_torch = torch.version.cuda is not None
    home = cpp_extension.CUDA_HOME
    toolkit = home is not None and os.path.exists(os.path.join(home, "include", "cuda_runtime.h"))
    if flag in ("0", "off", "no", "false"):
        return False
    if flag in ("1", "on", "yes", "true"):
        if not cuda_torch:
            sys.exit(f"safemax: SAFEMAX_CUDA={flag} but torch {torch.__version__} is a CPU build")
        if not toolkit:
            sys.exit(
                f"safemax: SAFEMAX_CUDA={flag} but no CUDA toolkit at CUDA_HOME={home!r}; "
                "set CUDA_HOME to the toolkit root (the folder holding include/cuda_runtime.h)"
            )
        return True
    if flag != "auto":
        sys.exit(f"safemax: SAFEMAX_CUDA must be auto, 0 or 1, got {flag!r}")
    if cuda_torch and not toolkit:
        print(
            f"safemax: WARNING torch {torch.__version__} has CUDA but no toolkit was found at "
            f"CUDA_HOME={home!r}; building the CPU kernels only",
            file=sys.stderr,
        )
    return cuda_torch and toolkit


def _extension():
    cpu_sources = ["csrc/safemax_op.cpp", "csrc/cpu/safemax_cpu.cpp"]
    cxx = ["-O3", "-fopenmp"]  # the C++ standard is chosen by torch (C++20 from torch 2.14)
    kwargs = dict(include_dirs=[os.path.join(HERE, "csrc")], extra_link_args=["-fopenmp"])
    if _want_cuda():
        print(f"safemax: building backends cpu, cuda (CUDA_HOME={cpp_extension.CUDA_HOME})")
        sources = cpu_sources + sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
        return cpp_extension.CUDAExtension(
            "safemax._C",
            sources,
            define_macros=[("SAFEMAX_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
            **kwargs,
        )
    print("safemax: building backends cpu")
    return cpp_extension.CppExtension(
        "safemax._C", cpu_sources, extra_compile_args={"cxx": cxx}, **kwargs
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
