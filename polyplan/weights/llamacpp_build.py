"""How ``scripts/setup.sh`` builds llama-cpp-python for this CPU: which instruction sets (the
"feature set", which names the wheel's cache folder), whether the kernel lets this process use AMX,
and the patch that makes ggml's AMX kernels run.

Standard library only: setup.sh runs it as ``.venv/bin/python -m polyplan.weights.llamacpp_build``
before polyplan (or torch) is installed.

    python -m polyplan.weights.llamacpp_build features       # "<set name> <cmake flags>"
    python -m polyplan.weights.llamacpp_build amx-permitted  # exit 0 when AMX may run here
    python -m polyplan.weights.llamacpp_build amx-source DIR # download + unpack + patch; prints the source dir

Why a patch (measured by an earlier session on the project's Intel Xeon, family 6 model 207, with
GCC 12): llama.cpp built with ``GGML_AMX_TILE/INT8/BF16=ON`` dies with SIGILL at ``tilezero`` on any
pass of two tokens or more. ggml's ``ggml_tile_config_init`` (``ggml-cpu/amx/mmq.cpp``) fills a
tile-config struct and hands its address to ``_tile_loadconfig``; GCC does not see that
``ldtilecfg`` reads the struct and drops the stores of ``rows``/``colsb``, so the tiles are
configured with zero rows. And the function loads the configuration only once per thread: in a
process that also runs torch, oneDNN's own AMX kernels load theirs on the same threads in between,
and ggml's next ``tilezero`` faults again. See docs/pools.md#llamacpp-members.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable, Collection
from pathlib import Path

from polyplan.cpu import cpu_flags  # pure Python: importable from the source tree before setup

LLAMACPP_VERSION = "0.3.36"

#: every x86-64 machine of this project has these; GGML_NATIVE=OFF so the build names its sets
#: instead of taking the building CPU's (-march=native), which another machine may not run
BASE_FLAGS = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
_NO_AVX_VNNI = "-DGGML_AVX_VNNI=OFF"
_NO_AMX = "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
#: POLYPLAN_LLAMACPP_BUILD values: unset/empty picks the best set this CPU (and kernel) allows
BUILD_MODES = ("", "portable", "noamx")

# arch_prctl(2) and its xstate options (linux/arch/x86/include/uapi/asm/prctl.h,
# Documentation/arch/x86/xstate.rst; Linux >= 5.16)
_SYS_ARCH_PRCTL = 158  # x86-64 syscall number
_ARCH_GET_XCOMP_SUPP = 0x1021  # stores the supported xstate components (a uint64 bitmap)
_ARCH_REQ_XCOMP_PERM = 0x1023  # asks for permission to use a dynamically enabled component
_XFEATURE_XTILECFG = 17
_XFEATURE_XTILEDATA = 18


class PatchError(RuntimeError):
    """ggml's source does not hold the text the AMX patch expects: never build it unpatched."""


def amx_permitted() -> bool:
    """Whether this process may run AMX tile instructions: Linux on x86-64, the kernel supports
    both tile xstate components (XCR0 bits 17 and 18) and grants XTILEDATA to this process (the same
    request ggml makes before using AMX). False, never an exception, wherever any of that fails."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (OSError, AttributeError):
        return False
    syscall.restype = ctypes.c_long
    supported = ctypes.c_uint64(0)
    if syscall(ctypes.c_long(_SYS_ARCH_PRCTL), ctypes.c_long(_ARCH_GET_XCOMP_SUPP), ctypes.byref(supported)) != 0:
        return False  # kernel older than 5.16: no AMX for user space
    tiles = (1 << _XFEATURE_XTILECFG) | (1 << _XFEATURE_XTILEDATA)
    if supported.value & tiles != tiles:
        return False
    return (
        syscall(ctypes.c_long(_SYS_ARCH_PRCTL), ctypes.c_long(_ARCH_REQ_XCOMP_PERM), ctypes.c_long(_XFEATURE_XTILEDATA))
        == 0
    )


def feature_set(flags: Collection[str], mode: str = "", amx_ok: Callable[[], bool] = amx_permitted) -> tuple[str, str]:
    """The feature set to build for a CPU with these ``/proc/cpuinfo`` flags: its name (the wheel
    cache's folder, e.g. ``avx512-vbmi-vnni-bf16``) and its cmake flags.

    ``mode`` is POLYPLAN_LLAMACPP_BUILD: ``portable`` forces the AVX2 set, ``noamx`` the best set
    without AMX. AMX (name suffix ``-amx``) needs AVX-512 with VNNI (ggml compiles its AMX kernels
    only with both), ``amx_tile`` and ``amx_int8`` in the flags and ``amx_ok()`` -- the kernel's
    permission, asked only when the flags are there; ``amx_bf16`` turns on GGML_AMX_BF16 too."""
    if mode not in BUILD_MODES:
        raise ValueError(f"POLYPLAN_LLAMACPP_BUILD={mode!r}: expected portable, noamx or nothing")
    has = set(flags).__contains__
    avx512 = all(map(has, ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq")))
    if mode == "portable" or not avx512:
        return "avx2", f"{BASE_FLAGS} -DGGML_AVX512=OFF {_NO_AVX_VNNI} {_NO_AMX}"
    name, extra = "avx512", "-DGGML_AVX512=ON"
    for flag, suffix, option in (
        ("avx512vbmi", "vbmi", "GGML_AVX512_VBMI"),
        ("avx512_vnni", "vnni", "GGML_AVX512_VNNI"),
        ("avx512_bf16", "bf16", "GGML_AVX512_BF16"),
    ):
        if has(flag):
            name += f"-{suffix}"
        extra += f" -D{option}={'ON' if has(flag) else 'OFF'}"
    amx = mode != "noamx" and has("avx512_vnni") and has("amx_tile") and has("amx_int8") and amx_ok()
    if not amx:
        return name, f"{BASE_FLAGS} {extra} {_NO_AVX_VNNI} {_NO_AMX}"
    bf16 = "ON" if has("amx_bf16") else "OFF"
    name += "-amx" if has("amx_bf16") else "-amx-int8"
    return name, f"{BASE_FLAGS} {extra} {_NO_AVX_VNNI} -DGGML_AMX_TILE=ON -DGGML_AMX_INT8=ON -DGGML_AMX_BF16={bf16}"


def is_amx_set(name: str) -> bool:
    """Whether a feature set's name is one of the AMX sets (built from the patched source)."""
    return "-amx" in name


#: the file the patch edits, relative to the unpacked llama-cpp-python sdist
MMQ_PATH = Path("vendor/llama.cpp/ggml/src/ggml-cpu/amx/mmq.cpp")
_FUNCTION = re.compile(r"^inline void ggml_tile_config_init\(void\) \{\n(?P<body>.*?)^\}\n", re.M | re.S)
_DONE_SHORTCUT = re.compile(
    r"^[ \t]*static thread_local bool done = false;[ \t]*\n\s*?^[ \t]*if \(done\) \{\s*return;\s*\}[ \t]*\n\s*?\n?",
    re.M,
)
_DONE_SET = re.compile(r"^[ \t]*done = true;[ \t]*\n", re.M)
_LOADCONFIG = re.compile(r"^(?P<indent>[ \t]*)_tile_loadconfig\(&tc\);[ \t]*\n", re.M)
_BARRIER = 'asm volatile("" : : "r"(&tc) : "memory");'


def _one(pattern: re.Pattern[str], text: str, what: str) -> re.Match[str]:
    found = list(pattern.finditer(text))
    if len(found) != 1:
        raise PatchError(f"ggml_tile_config_init: expected one {what}, found {len(found)}; not building unpatched")
    return found[0]


def patch_amx_tile_config(source: str) -> str:
    """``mmq.cpp``'s text with ``ggml_tile_config_init`` fixed (module docstring): a compiler
    barrier that makes the tile-config stores visible to ``ldtilecfg``, and the configuration loaded
    on every call instead of once per thread. Raises :class:`PatchError` unless the function is
    there exactly once in the 0.3.36 shape (so a changed upstream source fails the build loudly)."""
    function = _one(_FUNCTION, source, "`inline void ggml_tile_config_init(void) {`")
    body = function["body"]
    shortcut = _one(_DONE_SHORTCUT, body, "`static thread_local bool done` early return")
    done_set = _one(_DONE_SET, body, "`done = true;`")
    load = _one(_LOADCONFIG, body, "`_tile_loadconfig(&tc);`")
    indent = load["indent"]
    why = (
        f"{indent}// polyplan patch (docs/pools.md#llamacpp-members): load the tile configuration on every\n"
        f"{indent}// call, not once per thread -- oneDNN (torch) loads its own on the same threads in between\n"
    )
    barrier = (
        f"{indent}// polyplan patch: GCC 12 drops the stores above, not seeing that ldtilecfg reads them\n"
        f"{indent}{_BARRIER}\n"
    )
    pieces = sorted(
        [
            (shortcut.start(), shortcut.end(), why),
            (done_set.start(), done_set.end(), ""),
            (load.start(), load.start(), barrier),
        ]
    )
    out, at = [], 0
    for start, end, text in pieces:
        out += [body[at:start], text]
        at = end
    new_body = "".join(out) + body[at:]
    return source[: function.start("body")] + new_body + source[function.end("body") :]


def patch_sdist(root: Path) -> Path:
    """Apply :func:`patch_amx_tile_config` to the unpacked sdist at ``root``, in place; the file."""
    path = root / MMQ_PATH
    if not path.is_file():
        raise PatchError(f"{path} not found: not the llama-cpp-python {LLAMACPP_VERSION} sdist")
    path.write_text(patch_amx_tile_config(path.read_text(encoding="utf-8")), encoding="utf-8")
    return path


def amx_source(workdir: Path) -> Path:
    """Download the llama-cpp-python sdist into ``workdir`` (pip, source only), unpack it there and
    patch it: the directory ``pip wheel`` builds the AMX set from."""
    workdir.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
    pip += ["--no-binary", ":all:", "--no-deps", "-d", str(workdir), f"llama-cpp-python=={LLAMACPP_VERSION}"]
    subprocess.run(pip, check=True, stdout=sys.stderr)  # stdout is this command's answer
    archive = workdir / f"llama_cpp_python-{LLAMACPP_VERSION}.tar.gz"
    if not archive.is_file():
        raise PatchError(f"pip download left no {archive.name} in {workdir}")
    with tarfile.open(archive) as tar:
        # the "data" filter refuses absolute paths and links out of the tree (Python >= 3.11.4)
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(workdir, **kwargs)
    root = workdir / archive.name.removesuffix(".tar.gz")
    patch_sdist(root)
    return root


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    if command == "features":
        name, flags = feature_set(cpu_flags(), os.environ.get("POLYPLAN_LLAMACPP_BUILD", ""))
        print(name, flags)
        return 0
    if command == "amx-permitted":
        return 0 if amx_permitted() else 1
    if command == "amx-source" and len(argv) == 2:
        print(amx_source(Path(argv[1])))
        return 0
    print(__doc__.split("\n\n")[2], file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (ValueError, PatchError, subprocess.CalledProcessError) as e:
        print(f"llamacpp_build: {e}", file=sys.stderr)
        sys.exit(1)
