"""Derived GGUF members: another quantization of a member's weights, made by llama.cpp's own
quantizer (``llama_model_quantize`` through llama-cpp-python) and kept in the cache once.

A pool member ``derivation = "gguf:Q4_0"`` (backend llama.cpp) runs the Q4_0 quantization of
its source's GGUF. Why a ladder of types and not one 4-bit copy: on x86 llama.cpp has batched
(GEMM) kernels for Q4_0, Q8_0, IQ4_NL and F16 but not for Q4_1 or the K-quants, so a verifying or
prefilling member of those types costs several times more per token (issue 18's table).

The quantizer reads the source GGUF. When that GGUF holds full-precision tensors (F32/F16/BF16)
the derived file is a quantization of the real weights; when it is itself quantized (the
built-in catalog models ship only Q4_1 / Q4_K_M files, and their float "targets" are those files
dequantized) llama.cpp dequantizes each tensor to float32 -- the very values the float target
computes with -- and quantizes that: a different rounding of the target's own weights, which
``models list`` says. The result is deterministic (llama.cpp's reference quantizers), its sha256
is recorded in the entry's manifest and checked by ``models check``.

The quantizer runs in a child process: llama.cpp logs every tensor to stderr, and a crash or an
interrupt there must leave no half-written file (the entry is staged and appears in one rename).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from polyplan import cache as model_cache
from polyplan.errors import UserError

#: llama.cpp file types the quantizer makes without an importance matrix, and their ftype ids
#: (llama.h ``enum llama_ftype``; checked against the installed llama_cpp when quantizing)
GGUF_TYPES: dict[str, int] = {
    "F32": 0,
    "F16": 1,
    "Q4_0": 2,
    "Q4_1": 3,
    "Q8_0": 7,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q2_K": 10,
    "Q3_K_S": 11,
    "Q3_K_M": 12,
    "Q3_K_L": 13,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_K_S": 16,
    "Q5_K_M": 17,
    "Q6_K": 18,
    "IQ4_NL": 25,
    "BF16": 32,
}
FULL_PRECISION = {"F32", "F16", "BF16"}
PREFIX = "gguf:"
Log = Callable[[str], None]


class QuantizeError(UserError):
    """llama.cpp's quantizer could not make the derived GGUF."""


def parse_gguf_derivation(value: str, where: str) -> str:
    """``gguf:Q4_0`` -> ``Q4_0`` (case-insensitive); anything else is one error line."""
    if not isinstance(value, str) or not value.lower().startswith(PREFIX):
        raise UserError(
            f"{where}: a llama.cpp member's derivation is {PREFIX}TYPE (llama.cpp's quantizer), "
            f"e.g. gguf:Q4_0; got {value!r}"
        )
    qtype = value[len(PREFIX) :].strip().upper()
    if qtype not in GGUF_TYPES:
        raise UserError(
            f"{where}: unknown GGUF quantization {value[len(PREFIX) :]!r}: use one of {', '.join(GGUF_TYPES)}"
        )
    return qtype


def gguf_file_type(path: Path) -> str:
    """The quantization type a GGUF declares (``general.file_type``), e.g. ``Q4_1``; ``?`` if unknown."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(path, "r").get_field("general.file_type")
    except (OSError, ValueError):
        return "?"
    if field is None:
        return "?"
    ftype = int(field.parts[field.data[0]][0])
    return next((name for name, i in GGUF_TYPES.items() if i == ftype), f"type {ftype}")


def derived_dir(source_sha256: str, qtype: str) -> Path:
    """The cache entry of ``qtype`` made from the GGUF whose sha256 is ``source_sha256``."""
    return model_cache.cache_root() / "gguf-derived" / f"{source_sha256[:12]}-{qtype.lower()}"


def derived_file(source_sha256: str, qtype: str) -> Path:
    return derived_dir(source_sha256, qtype) / f"model-{qtype.lower()}.gguf"


def require_derived(source_sha256: str, qtype: str, fix: str, *, verify_hashes: bool = False) -> Path:
    """The derived GGUF, intact (sizes; sha256 too when ``verify_hashes``), or one error line naming ``fix``."""
    entry = derived_dir(source_sha256, qtype)
    if not entry.is_dir():
        raise QuantizeError(f"the {qtype} GGUF derived by llama.cpp's quantizer is not made yet; run `{fix}`")
    model_cache.read_manifest(entry, fix=f"{fix} --force", verify_hashes=verify_hashes)
    return derived_file(source_sha256, qtype)


def derived_manifest(source_sha256: str, qtype: str) -> dict | None:
    """What the derived entry records (source, its type, size), or None when it is not made."""
    entry = derived_dir(source_sha256, qtype)
    try:
        return model_cache.read_manifest(entry, fix="")
    except model_cache.CorruptCache:
        return None


_QUANTIZE_SCRIPT = """
import sys, llama_cpp as l
src, dst, qtype, threads, expected = sys.argv[1:6]
ftype = getattr(l, "LLAMA_FTYPE_ALL_F32" if qtype == "F32" else "LLAMA_FTYPE_MOSTLY_" + qtype, None)
if ftype is None or int(ftype) != int(expected):
    sys.stderr.write("this llama-cpp-python has no file type " + qtype + "\\n"); sys.exit(3)
p = l.llama_model_quantize_default_params()
p.ftype = ftype
p.nthread = int(threads)
p.allow_requantize = True
sys.exit(l.llama_model_quantize(src.encode(), dst.encode(), p))
"""
_PROGRESS = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")


def derive_gguf(
    source_gguf: Path,
    source_sha256: str,
    source_label: str,
    qtype: str,
    *,
    threads: int,
    force: bool = False,
    log: Log | None = None,
) -> Path:
    """Make (once) the ``qtype`` quantization of ``source_gguf`` with llama.cpp's quantizer and
    keep it in the cache; returns its path. Nothing is left behind when it fails."""
    log = log or (lambda msg: None)
    final = derived_dir(source_sha256, qtype)
    if not force and derived_manifest(source_sha256, qtype) is not None:
        return derived_file(source_sha256, qtype)
    from polyplan.models.llamacpp_runtime import import_llama_cpp

    llama_cpp = import_llama_cpp()
    from_type = gguf_file_type(source_gguf)
    how = "from full precision" if from_type in FULL_PRECISION else f"requantized from {from_type}"
    log(f"{source_label}: quantizing to {qtype} with llama.cpp's quantizer ({how}, {threads} threads)")
    model_cache.sweep_stale_tmp()
    start = time.perf_counter()
    with model_cache.staging_dir() as work:
        built = work / "entry"
        built.mkdir()
        out = built / derived_file(source_sha256, qtype).name
        _run_quantizer(source_gguf, out, qtype, threads, log)
        model_cache.write_manifest(
            built,
            {
                "source": source_label,
                "source_sha256": source_sha256,
                "dtype": f"gguf:{qtype}",
                "quantized_from": from_type,
                "llama_cpp_python": getattr(llama_cpp, "__version__", "?"),
            },
        )
        model_cache.publish_dir(built, final)
    size_mb = derived_file(source_sha256, qtype).stat().st_size / 1e6
    log(f"{source_label}: {qtype} GGUF made in {time.perf_counter() - start:.1f} s ({size_mb:.0f} MB), kept in {final}")
    return derived_file(source_sha256, qtype)


def _run_quantizer(source: Path, out: Path, qtype: str, threads: int, log: Log) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _QUANTIZE_SCRIPT, str(source), str(out), qtype, str(threads), str(GGUF_TYPES[qtype])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    assert proc.stderr is not None
    tail: list[str] = []
    reported = 0
    try:
        for line in proc.stderr:
            if line.strip():
                tail = [*tail[-4:], line.strip()]
            if m := _PROGRESS.search(line):
                done, total = int(m.group(1)), int(m.group(2))
                if done * 4 >= (reported + 1) * total:  # a line per quarter of the tensors
                    reported = done * 4 // total
                    log(f"  quantized {done}/{total} tensors")
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        why = next((ln for ln in reversed(tail) if "error" in ln.lower() or "failed" in ln.lower()), None)
        why = why or (tail[-1] if tail else f"exit status {rc}")
        if rc < 0:
            why = f"the quantizer died with signal {-rc}"
        free_mb = _free_mb(out.parent)
        disk = f"; {free_mb:.0f} MB free in the cache" if free_mb is not None and free_mb < 2048 else ""
        raise QuantizeError(f"llama.cpp could not quantize {source.name} to {qtype} ({why[:200]}){disk}")


def _free_mb(path: Path) -> float | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize / 1e6
