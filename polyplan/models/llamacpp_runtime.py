"""llama.cpp's native library as polyplan meets it: importable or not, and safe to run or not.

llama-cpp-python is an optional extra (``polyplan[llamacpp]``) built from source. Two ways it
fails are not Python errors that a ``try`` can turn into one line:

* the wheel is missing or its shared library does not load (ImportError / OSError /
  RuntimeError from its ctypes loader) -- caught here, reported with the install command;
* a library built with ``-march=native`` on another CPU, or one whose CPU reports features the
  VM does not allow (AMX on some Xeon VMs), dies with SIGILL on the first ``eval``: that kills
  the process. :func:`check_runs` therefore loads the GGUF and evaluates one token in a child
  process first, once per (library, CPU, GGUF); the outcome is remembered in the cache. A build
  with AMX also runs a torch bf16 matmul between two batched passes there: oneDNN's AMX kernels
  replace the thread's tile configuration, which unpatched ggml assumed it still held (SIGILL).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from polyplan import cache as model_cache
from polyplan.cpu import cpu_flags
from polyplan.errors import UserError

#: how llama.cpp members become available: setup.sh builds the extra for the instruction sets this
#: CPU reports, AMX only where the kernel grants it and from patched source (a plain
#: `pip install llama-cpp-python` builds with -march=native; see docs/pools.md)
LLAMACPP_INSTALL = (
    "scripts/setup.sh (builds the polyplan[llamacpp] extra for this CPU's instruction sets; "
    "POLYPLAN_LLAMACPP_BUILD=portable for the AVX2 set, noamx for one without AMX)"
)
_PROBE_TIMEOUT_S = 300


class LlamaCppUnavailable(UserError):
    """llama-cpp-python is not installed, or its native library does not load or run here."""


class GGUFLoadError(UserError):
    """llama.cpp cannot load a GGUF file."""


def import_llama_cpp() -> ModuleType:
    """The ``llama_cpp`` module, or a one-line :class:`LlamaCppUnavailable`."""
    try:
        import llama_cpp
    except ImportError as e:
        missing = getattr(e, "name", None) == "llama_cpp"
        why = "is not installed" if missing else f"does not import ({str(e).splitlines()[0][:160]})"
        raise LlamaCppUnavailable(
            f"llama.cpp members need llama-cpp-python, which {why}; install it with {LLAMACPP_INSTALL}"
        ) from None
    except (OSError, RuntimeError) as e:
        raise LlamaCppUnavailable(
            f"llama-cpp-python's native library does not load ({str(e).splitlines()[0][:160]}); "
            f"rebuild it with {LLAMACPP_INSTALL}"
        ) from None
    return llama_cpp


def build_features() -> str | None:
    """The CPU features llama.cpp was built with (``AVX2 AVX512 ...`` from its system info), or
    None without llama.cpp: the same GGUF runs at very different speeds in a portable and an
    AVX-512 build, so profiles record it."""
    try:
        llama_cpp = import_llama_cpp()
        info = llama_cpp.llama_print_system_info()
    except (LlamaCppUnavailable, AttributeError, OSError):
        return None
    text = info.decode(errors="replace") if isinstance(info, bytes) else str(info)
    flags = [part.split("=")[0].strip() for part in text.split("|") if part.strip().endswith("= 1")]
    return " ".join(f.split(":")[-1].strip() for f in flags) or None


def unavailable_reason() -> str | None:
    """None when llama.cpp members can be built here, else why not (one line)."""
    try:
        import_llama_cpp()
    except LlamaCppUnavailable as e:
        return str(e)
    return None


def _probe_key(llama_cpp: ModuleType, gguf: Path, with_torch: bool = False) -> str:
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    libs = sorted(lib_dir.glob("*.so*")) if lib_dir.is_dir() else []
    parts = [_PROBE_VERSION, getattr(llama_cpp, "__version__", "?"), " ".join(cpu_flags()), str(gguf.resolve())]
    if with_torch:  # only then: the markers of plain probes made before this option stay valid
        parts.append("torch between passes")
    for p in [gguf, *libs]:
        st = p.stat()
        parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


#: the probe runs a 64-token batch (the batched matmul kernels a prefill and a verification use,
#: which a two-token pass never reaches) and then one token; bump to re-probe every machine.
#: With "torch" after the GGUF it runs a torch bf16 matmul (oneDNN's AMX kernels where the CPU has
#: them, which load their own tile configuration on this thread) and another batched pass between
#: the two: the sequence that killed ggml's unpatched AMX kernels in a process that also runs torch.
_PROBE_VERSION = "3"
_PROBE_SCRIPT = (
    "import sys, llama_cpp\n"
    "m = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=128, n_batch=64, n_ubatch=64, n_threads=2, verbose=False)\n"
    "m.eval([(7 * i + 1) % m.n_vocab() for i in range(64)])\n"
    "if sys.argv[2:] == ['torch']:\n"
    "    import torch\n"
    "    a = torch.randn(512, 512).to(torch.bfloat16)\n"
    "    float((a @ a).float().sum())\n"
    "    m.eval([(5 * i + 3) % m.n_vocab() for i in range(32)])\n"
    "m.eval([1])\n"
)


def built_with_amx() -> bool:
    """Whether the installed llama.cpp was built with AMX kernels (its system info says AMX_INT8)."""
    return "AMX" in (build_features() or "")


def check_runs(gguf: Path, *, with_torch: bool | None = None) -> None:
    """Load ``gguf`` and evaluate a 64-token batch and one token in a child process (once per
    library, CPU and file):
    a crash there is a one-line :class:`LlamaCppUnavailable` here instead of a dead process.
    ``with_torch`` adds a torch bf16 matmul and a second batch between them; by default it does so
    for a build with AMX (the kernels whose tile state torch's oneDNN replaces)."""
    llama_cpp = import_llama_cpp()
    if with_torch is None:
        with_torch = built_with_amx()
    marker = model_cache.cache_root() / "llamacpp-probes" / _probe_key(llama_cpp, gguf, with_torch)
    if marker.exists():
        return
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE_SCRIPT, str(gguf), *(["torch"] if with_torch else [])],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise LlamaCppUnavailable(
            f"llama.cpp did not evaluate one token of {gguf.name} within {_PROBE_TIMEOUT_S} s"
        ) from None
    if proc.returncode < 0:
        sig = -proc.returncode
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        raise LlamaCppUnavailable(
            f"llama.cpp's native library crashed ({name}) evaluating {gguf.name} on this CPU; "
            f"it was probably built for another CPU: rebuild it with {LLAMACPP_INSTALL}"
        )
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        why = lines[-1][:200] if lines else f"exit status {proc.returncode}"
        raise GGUFLoadError(f"llama.cpp cannot load {gguf} ({why})")
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}")
    tmp.write_text(f"{gguf}\n")
    os.replace(tmp, marker)
