"""Derived GGUF members (polyplan.weights.gguf_quantize): pool syntax, one-line errors, and a
failed quantization that leaves nothing in the cache. The quantizer itself runs on a tiny float32
GGUF (no downloaded weights needed)."""

from __future__ import annotations

import pytest

from polyplan.errors import UserError
from polyplan.models import llamacpp_runtime as runtime
from polyplan.weights import gguf_quantize
from polyplan.weights.pools import PoolFileError, load_pool

from tiny_models import tiny_gguf, tiny_llama

LLAMACPP_MISSING = runtime.unavailable_reason()
needs_llamacpp = pytest.mark.skipif(LLAMACPP_MISSING is not None, reason=LLAMACPP_MISSING or "")


def _pool(tmp_path, member_lines: str) -> object:
    (tmp_path / "w.gguf").write_bytes(b"GGUF")  # only parsed here, never loaded
    path = tmp_path / "p.toml"
    path.write_text(
        '[pool]\ntarget = "t"\n[[member]]\nname = "t"\nsource = "gguf:w.gguf"\n'
        f'[[member]]\nname = "d"\nsource = "gguf:w.gguf"\n{member_lines}'
    )
    return load_pool(path)


def test_a_gguf_derivation_parses_into_its_type(tmp_path):
    pool = _pool(tmp_path, 'backend = "llama.cpp"\nderivation = "gguf:q4_0"\n')
    spec = pool.member("d")
    assert spec.quantization == "Q4_0" and spec.derivation == "gguf:Q4_0"
    assert "Q4_0 by llama.cpp's quantizer" in spec.describe()
    assert pool.member("t").quantization is None


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('backend = "llama.cpp"\nderivation = "gguf:Q9_9"\n', "unknown GGUF quantization 'Q9_9'"),
        ('backend = "llama.cpp"\nderivation = "int8"\n', "a llama.cpp member's derivation is gguf:TYPE"),
        ('derivation = "gguf:Q4_0"\n', 'add backend = "llama.cpp"'),
    ],
)
def test_bad_derivations_are_one_line(tmp_path, lines, message):
    with pytest.raises(UserError, match=message) as info:
        _pool(tmp_path, lines)
    assert "\n" not in str(info.value)


def test_a_derivation_of_a_model_free_member_is_refused(tmp_path):
    path = tmp_path / "p.toml"
    (tmp_path / "w.gguf").write_bytes(b"GGUF")
    path.write_text(
        '[pool]\ntarget = "t"\n[[member]]\nname = "t"\nsource = "gguf:w.gguf"\n'
        '[[member]]\nname = "pl"\nsource = "prompt-lookup"\nderivation = "gguf:Q4_0"\n'
    )
    with pytest.raises(PoolFileError, match="unknown keys \\['derivation'\\] for prompt-lookup"):
        load_pool(path)


def test_a_derived_member_not_made_yet_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYPLAN_CACHE", str(tmp_path / "cache"))
    pool = _pool(tmp_path, 'backend = "llama.cpp"\nderivation = "gguf:Q8_0"\n')
    assert pool.installed()["d"] is False
    with pytest.raises(gguf_quantize.QuantizeError, match="Q8_0 GGUF .* not made yet; run `polyplan models install"):
        pool.member_gguf("d")


@needs_llamacpp
def test_quantizing_a_float_gguf_is_kept_once_with_its_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYPLAN_CACHE", str(tmp_path / "cache"))
    source = tiny_gguf(tiny_llama(vocab_size=16, hidden_size=32, seed=3), tmp_path / "f32.gguf")
    lines: list[str] = []
    made = gguf_quantize.derive_gguf(source, "ab" * 32, "tiny", "Q8_0", threads=1, log=lines.append)
    assert gguf_quantize.gguf_file_type(made) == "Q8_0"
    assert made.stat().st_size < source.stat().st_size
    manifest = gguf_quantize.derived_manifest("ab" * 32, "Q8_0")
    assert manifest["quantized_from"] == "F32" and manifest["dtype"] == "gguf:Q8_0"
    assert any("from full precision" in line for line in lines)
    # made once: a second call neither quantizes nor logs
    again: list[str] = []
    assert gguf_quantize.derive_gguf(source, "ab" * 32, "tiny", "Q8_0", threads=1, log=again.append) == made
    assert again == []
    gguf_quantize.require_derived("ab" * 32, "Q8_0", "fix", verify_hashes=True)
    data = bytearray(made.read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    made.write_bytes(bytes(data))
    with pytest.raises(UserError, match="fails its sha256 check"):
        gguf_quantize.require_derived("ab" * 32, "Q8_0", "fix", verify_hashes=True)


@needs_llamacpp
def test_a_failed_quantization_is_one_line_and_leaves_no_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYPLAN_CACHE", str(tmp_path / "cache"))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(gguf_quantize.QuantizeError, match="llama.cpp could not quantize broken.gguf to Q4_0") as info:
        gguf_quantize.derive_gguf(broken, "cd" * 32, "broken", "Q4_0", threads=1)
    assert "\n" not in str(info.value)
    assert not gguf_quantize.derived_dir("cd" * 32, "Q4_0").exists()
    staging = tmp_path / "cache" / "tmp"
    assert not staging.exists() or list(staging.iterdir()) == []
