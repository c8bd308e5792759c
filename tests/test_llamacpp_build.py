"""How setup.sh builds llama.cpp (issue 29): the feature set a CPU gets, the kernel's AMX permission,
the patch of ggml's AMX tile configuration (on an unchanged excerpt of the real 0.3.36 source), and
the probe's torch step. No AMX instruction runs here: these pass on CPUs with and without AMX."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from polyplan.cpu import cpu_flags
from polyplan.models import llamacpp_runtime as runtime
from polyplan.weights import llamacpp_build as build

ROOT = Path(__file__).resolve().parents[1]
#: lines 180-228 of vendor/llama.cpp/ggml/src/ggml-cpu/amx/mmq.cpp in the llama-cpp-python 0.3.36 sdist
MMQ_EXCERPT = Path(__file__).parent / "fixtures" / "ggml_amx_mmq_0.3.36_excerpt.cpp"

#: the AMD EPYC these tests were written on (AVX-512 with VBMI/VNNI/BF16, no AMX), abridged
EPYC = [
    *("avx", "avx2", "fma", "f16c", "bmi2"),
    *("avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512vbmi", "avx512_vnni", "avx512_bf16"),
]
#: the project's Intel Xeon (family 6 model 207) adds the AMX flags
XEON = [*EPYC, "amx_bf16", "amx_tile", "amx_int8", "avx_vnni"]
#: setup.sh's AVX-512 flags before the choice moved to Python: the cached wheels keep their meaning
EPYC_FLAGS_BEFORE = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON "
    "-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON "
    "-DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
)


def never_asked() -> bool:
    raise AssertionError("the kernel is asked for AMX only when the CPU reports it")


def test_a_cpu_without_amx_keeps_its_avx512_set_and_flags():
    assert build.feature_set(EPYC, "", never_asked) == ("avx512-vbmi-vnni-bf16", EPYC_FLAGS_BEFORE)
    assert build.feature_set(EPYC, "noamx", never_asked)[0] == "avx512-vbmi-vnni-bf16"
    name, flags = build.feature_set(["avx", "avx2", "fma"], "", never_asked)
    assert name == "avx2" and "-DGGML_AVX512=OFF" in flags and "-DGGML_AMX_TILE=OFF" in flags


def test_amx_is_chosen_only_with_the_flags_and_the_kernels_permission():
    name, flags = build.feature_set(XEON, "", lambda: True)
    assert name == "avx512-vbmi-vnni-bf16-amx" and build.is_amx_set(name)
    assert "-DGGML_AMX_TILE=ON -DGGML_AMX_INT8=ON -DGGML_AMX_BF16=ON" in flags and "-DGGML_AVX512_VNNI=ON" in flags
    assert "-DGGML_NATIVE=OFF" in flags and "-DGGML_AVX_VNNI=OFF" in flags
    # the kernel refuses (a VM that hides the tile state): the AVX-512 set, exactly as without AMX
    assert build.feature_set(XEON, "", lambda: False) == ("avx512-vbmi-vnni-bf16", EPYC_FLAGS_BEFORE)
    # forced off, or ggml's AMX kernels cannot compile (they need AVX-512 VNNI): never asked
    assert build.feature_set(XEON, "noamx", never_asked) == ("avx512-vbmi-vnni-bf16", EPYC_FLAGS_BEFORE)
    no_vnni = [f for f in XEON if f != "avx512_vnni"]
    assert not build.is_amx_set(build.feature_set(no_vnni, "", never_asked)[0])
    name, flags = build.feature_set([f for f in XEON if f != "amx_bf16"], "", lambda: True)
    assert name == "avx512-vbmi-vnni-bf16-amx-int8" and "-DGGML_AMX_BF16=OFF" in flags
    assert build.feature_set(XEON, "portable", never_asked)[0] == "avx2"
    with pytest.raises(ValueError, match="POLYPLAN_LLAMACPP_BUILD='native'"):
        build.feature_set(XEON, "native", never_asked)


def test_the_amx_permission_check_answers_without_raising():
    permitted = build.amx_permitted()
    assert isinstance(permitted, bool)
    if "amx_tile" not in cpu_flags():
        assert permitted is False  # e.g. the AMD EPYC: arch_prctl refuses XTILEDATA (EOPNOTSUPP)


def run_build(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m polyplan.weights.llamacpp_build`` as setup.sh runs it: from the source tree."""
    return subprocess.run(
        [sys.executable, "-m", "polyplan.weights.llamacpp_build", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_setup_gets_one_line_from_the_features_command():
    out = run_build("features", POLYPLAN_LLAMACPP_BUILD="portable")
    assert out.returncode == 0 and out.stdout.startswith("avx2 -DGGML_NATIVE=OFF ") and out.stdout.count("\n") == 1
    expected = build.feature_set(cpu_flags(), "noamx")
    assert run_build("features", POLYPLAN_LLAMACPP_BUILD="noamx").stdout.rstrip("\n").split(" ", 1) == list(expected)
    bad = run_build("features", POLYPLAN_LLAMACPP_BUILD="fast")
    assert bad.returncode == 1 and "expected portable, noamx or nothing" in bad.stderr and not bad.stdout


def test_the_patch_fixes_the_real_tile_config_function():
    original = MMQ_EXCERPT.read_text(encoding="utf-8")
    assert "static thread_local bool done" in original  # the fixture is the unpatched source
    patched = build.patch_amx_tile_config(original)
    body = patched[patched.index("inline void ggml_tile_config_init") :].split("\n}\n", 1)[0]
    lines = [ln.strip() for ln in body.splitlines()]
    at = lines.index("_tile_loadconfig(&tc);")
    assert lines[at - 1] == 'asm volatile("" : : "r"(&tc) : "memory");'  # the barrier right before it
    assert "done" not in "\n".join(ln for ln in lines if not ln.startswith("//")) and "return" not in body
    assert "tc.rows[7] = 16;  tc.colsb[7] = 64;" in body  # the configuration itself is untouched
    # everything outside the function is as it was
    head, tail = original.split("inline void ggml_tile_config_init", 1)
    assert patched.startswith(head) and patched.endswith(tail.split("\n}\n", 1)[1])


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.replace("ggml_tile_config_init(void)", "ggml_tile_config_setup(void)"),  # renamed upstream
        lambda s: s.replace("    _tile_loadconfig(&tc);\n", ""),
        lambda s: s.replace("    _tile_loadconfig(&tc);\n", "    _tile_loadconfig(&tc);\n    _tile_loadconfig(&tc);\n"),
        lambda s: s.replace("static thread_local bool done = false;", "static bool done = false;"),
        lambda s: s.replace("    done = true;\n", ""),
        build.patch_amx_tile_config,  # patching twice: the shortcut is gone
        lambda s: "int main() { return 0; }\n",
    ],
)
def test_the_patch_refuses_any_other_text(edit):
    with pytest.raises(build.PatchError, match="ggml_tile_config_init: expected one .*not building unpatched"):
        build.patch_amx_tile_config(edit(MMQ_EXCERPT.read_text(encoding="utf-8")))


def test_the_patch_edits_the_sdist_in_place(tmp_path):
    with pytest.raises(build.PatchError, match="not the llama-cpp-python 0.3.36 sdist"):
        build.patch_sdist(tmp_path)
    path = tmp_path / build.MMQ_PATH
    path.parent.mkdir(parents=True)
    path.write_text(MMQ_EXCERPT.read_text(encoding="utf-8"), encoding="utf-8")
    assert build.patch_sdist(tmp_path) == path
    assert 'asm volatile("" : : "r"(&tc) : "memory");' in path.read_text(encoding="utf-8")


def test_an_amx_build_is_probed_with_torch_between_its_passes(monkeypatch, tmp_path):
    """issue 29: oneDNN's AMX kernels replace the tile state ggml loaded; the probe child must run
    the sequence a polyplan process runs (llama.cpp batch, torch bf16 matmul, llama.cpp batch)."""
    assert "argv[2:] == ['torch']" in runtime._PROBE_SCRIPT and "torch.bfloat16" in runtime._PROBE_SCRIPT
    fake = types.SimpleNamespace(__file__=str(tmp_path / "llama_cpp" / "__init__.py"), __version__="0")
    monkeypatch.setattr(runtime, "import_llama_cpp", lambda: fake)
    monkeypatch.setenv("POLYPLAN_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert runtime._probe_key(fake, gguf, True) != runtime._probe_key(fake, gguf)
    # the child dies unless it was asked for the torch step
    monkeypatch.setattr(runtime, "_PROBE_SCRIPT", "import os, signal, sys\nif sys.argv[2:] != ['torch']: os.abort()")
    monkeypatch.setattr(runtime, "build_features", lambda: "AVX2 AVX512 AVX512_VNNI AMX_INT8")
    runtime.check_runs(gguf)  # an AMX build: the torch step by default
    monkeypatch.setattr(runtime, "build_features", lambda: "AVX2 AVX512")
    with pytest.raises(runtime.LlamaCppUnavailable, match="crashed \\(SIGABRT\\)"):
        runtime.check_runs(gguf)
    runtime.check_runs(gguf, with_torch=True)  # remembered from the first call


@pytest.mark.weights
@pytest.mark.slow  # a child that imports torch: about 20 s on 2 busy cores
@pytest.mark.skipif(runtime.unavailable_reason() is not None, reason=runtime.unavailable_reason() or "")
def test_the_installed_build_survives_the_torch_step(smollm2_pool):
    """The real probe script with the torch step, on the installed build and the embedded GGUF: on
    an AMX machine with setup.sh's AMX set this is the fault-2 check; elsewhere a smoke test."""
    if not smollm2_pool.installed().get("smollm2-135m:q4"):
        pytest.skip("the kept Q4_1 GGUF is missing: run `polyplan models install smollm2`")
    gguf = smollm2_pool.member_gguf("smollm2-135m:q4")
    child = subprocess.run(
        [sys.executable, "-c", runtime._PROBE_SCRIPT, str(gguf), "torch"], capture_output=True, text=True, timeout=300
    )
    assert child.returncode == 0, child.stderr[-2000:]
