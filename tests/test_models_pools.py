"""Pool files: parsing, refusals, lazy drafters, vocabulary checks, CLI errors. Tiny random
models stand in for real ones (weights don't matter here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from polyplan.cpu import usable_cores
from polyplan.errors import UserError
from polyplan.models.drafter import VocabularyMismatch
from polyplan.weights import MemberSpec, Pool, builtin_pools, load_pool
from polyplan.weights.pools import UnknownMember, UnknownPool

from tiny_models import tiny_llama


def save_tiny(folder: Path, vocab: list[str] | None = None, vocab_size: int = 16, seed: int = 0) -> Path:
    """A tiny llama checkpoint directory, with a word-level tokenizer when ``vocab`` is given."""
    model = tiny_llama(vocab_size=vocab_size, seed=seed)
    model.save_pretrained(folder)
    if vocab is not None:
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=vocab[0]))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=vocab[0], eos_token=vocab[1]).save_pretrained(folder)
    return folder


WORDS = ["<unk>", "</s>"] + [f"w{i}" for i in range(14)]

POOL = """
[pool]
name = "tiny"
target = "big"

[sources.big-weights]
dir = "big"

[[member]]
name = "big"
source = "big-weights"

[[member]]
name = "big:bf16"
source = "big-weights"
dtype = "bf16"

[[member]]
name = "small"
source = "dir:small"

[[member]]
name = "pl"
source = "prompt-lookup"
max_ngram = 2
"""


@pytest.fixture
def tiny_pool_file(tmp_path) -> Path:
    save_tiny(tmp_path / "big", WORDS, seed=0)
    save_tiny(tmp_path / "small", WORDS, seed=1)
    path = tmp_path / "pool.toml"
    path.write_text(POOL)
    return path


def test_builtin_pools_parse():
    assert {"smollm2", "qwen-coder"} <= set(builtin_pools())
    p = load_pool("smollm2")
    assert isinstance(p, Pool) and p.name == "smollm2" and p.target == "smollm2-135m"
    assert p.names == [
        "smollm2-135m",
        "smollm2-135m:bf16",
        "smollm2-135m:int8",
        "smollm2-135m:q4",
        "smollm2-135m:q8_0",
        "smollm2-135m:q4_0",
        "smollm2-135m:iq4_nl",
        "prompt-lookup",
        "ngram",
    ]
    # the ladder: llama.cpp quantizations of the Q4_1 GGUF, made once by llama.cpp's quantizer
    assert [p.member(n).quantization for n in p.names if p.member(n).llama_cpp] == [None, "Q8_0", "Q4_0", "IQ4_NL"]
    assert {p.source(n).label for n in p.names if p.member(n).llama_cpp} == {p.source("smollm2-135m").label}
    assert all(isinstance(m, MemberSpec) for m in p.members)
    assert p.member("smollm2-135m:int8").derivation == "int8"
    q = load_pool("qwen-coder")
    assert q.target == "qwen2.5-coder-1.5b" and q.member("qwen2.5-coder-0.5b").dtype == "bfloat16"
    assert {m.kind for m in q.members} == {"model", "llama.cpp", "prompt-lookup", "ngram"}
    assert q.source("qwen2.5-coder-1.5b:q4") == q.source("qwen2.5-coder-1.5b")  # same_as
    # threads default to the cores this process may use
    assert q.member("qwen2.5-coder-0.5b:q4").options == {
        "threads": usable_cores(),
        "n_ctx": 4096,
        "min_pass": 2,
        "flash_attn": True,
    }
    assert q.member("qwen2.5-coder-1.5b:q4_0").quantization == "Q4_0"


def test_user_pool_file_builds_drafters_lazily(tiny_pool_file):
    pool = load_pool(str(tiny_pool_file))
    assert pool.names == ["big", "big:bf16", "small", "pl"] and pool.target == "big"
    assert pool._drafters == {}  # nothing loaded by parsing
    big, bf16, small, pl = pool.drafters(["big", "big:bf16", "small", "pl"])
    assert pool.drafter("big") is big  # cached
    assert bf16.dtype == torch.bfloat16 and big.dtype == torch.float32
    assert pl.point_mass and pl.vocab_size == big.vocab_size == small.vocab_size == 16
    ids = torch.tensor(pool.tokenizer("w3 w4 w5 w3 w4")["input_ids"])
    assert ids.tolist() == [5, 6, 7, 5, 6]
    logits = big.score(ids)
    assert logits.shape == (5, 16) and logits.dtype == torch.float32
    assert pl.propose(ids.tolist(), 3) == [7, 5, 6]
    # the bf16 copy is the same weights: its greedy choices mostly agree with the float32 target
    agree = (bf16.score(ids).argmax(-1) == logits.argmax(-1)).float().mean()
    assert agree >= 0.6


def test_unknown_pool_and_member(tiny_pool_file):
    with pytest.raises(UnknownPool, match=r"unknown pool 'nope'.*built-in pools: .*smollm2"):
        load_pool("nope")
    with pytest.raises(UnknownPool, match="not a pool file"):
        load_pool(str(tiny_pool_file.parent))
    pool = load_pool(str(tiny_pool_file))
    with pytest.raises(UnknownMember, match=r"pool tiny has no member 'huge' \(members: big, big:bf16, small, pl\)"):
        pool.drafter("huge")
    with pytest.raises(UnknownMember):
        pool.drafters(["big", "huge"])
    assert pool._drafters == {}  # refused before loading anything


def test_vocabulary_size_mismatch_refused(tmp_path):
    save_tiny(tmp_path / "big", vocab_size=16)
    save_tiny(tmp_path / "other", vocab_size=24)
    path = tmp_path / "p.toml"
    path.write_text(
        '[pool]\ntarget = "big"\n[[member]]\nname = "big"\nsource = "dir:big"\n'
        '[[member]]\nname = "other"\nsource = "dir:other"\n'
    )
    pool = load_pool(path)
    with pytest.raises(VocabularyMismatch, match="other has a vocabulary of 24 tokens but big has 16"):
        pool.drafter("other")


def test_tokenizer_mismatch_refused_even_with_equal_sizes(tmp_path):
    save_tiny(tmp_path / "big", WORDS)
    save_tiny(tmp_path / "other", WORDS[:2] + [f"v{i}" for i in range(14)])
    path = tmp_path / "p.toml"
    path.write_text(
        '[pool]\ntarget = "big"\n[[member]]\nname = "big"\nsource = "dir:big"\n'
        '[[member]]\nname = "other"\nsource = "dir:other"\n'
    )
    with pytest.raises(VocabularyMismatch, match="other .* uses a different tokenizer than the target big"):
        load_pool(path).drafter("other")


@pytest.mark.parametrize(
    "body, message",
    [
        ('[pool]\ntarget = "a"\n', "needs at least one"),
        ('[[member]]\nname = "a"\nsource = "dir:x"\n', "missing \\[pool\\]"),
        ('[pool]\ntarget = "b"\n[[member]]\nname = "a"\nsource = "dir:x"\n', "target 'b' is not a member"),
        ('[pool]\ntarget = "a"\n[[member]]\nname = "a"\nsource = "ngram"\n', "must be a model"),
        (
            '[pool]\ntarget = "a"\n[[member]]\nname = "a"\nsource = "dir:x"\n'
            '[[member]]\nname = "a"\nsource = "dir:y"\n',
            "duplicate member names",
        ),
        (
            '[pool]\ntarget = "a"\n[[member]]\nname = "a"\nsource = "dir:x"\ndtyp = "bf16"\n',
            "unknown keys \\['dtyp'\\]",
        ),
        ('[pool]\ntarget = "a"\n[[member]]\nname = "a"\nsource = "dir:x"\ndtype = "int4"\n', "unknown dtype 'int4'"),
        (
            '[pool]\ntarget = "a"\n[[member]]\nname = "a"\nsource = "dir:x"\nderivation = "int2"\n',
            "unknown derivation 'int2'",
        ),
        (
            '[pool]\ntarget = "a"\n[[member]]\nname = "a"\nsource = "dir:x"\n'
            '[[member]]\nname = "p"\nsource = "prompt-lookup"\norder = 3\n',
            "unknown keys \\['order'\\] for prompt-lookup",
        ),
        ("[pool\n", "not valid TOML"),
        ('[pool]\ntarget = "a"\n[[member]]\nname = "a"\nsource = "whatever"\n', "unknown model source 'whatever'"),
    ],
)
def test_bad_pool_files_give_one_clear_error(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(UserError, match=message) as info:
        load_pool(path)
    assert "\n" not in str(info.value)


def test_missing_weights_name_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYPLAN_CACHE", str(tmp_path / "empty-cache"))
    pool = load_pool("smollm2")
    members = ("smollm2-135m", "smollm2-135m:bf16", "smollm2-135m:int8", "smollm2-135m:q4")
    ladder = ("smollm2-135m:q8_0", "smollm2-135m:q4_0", "smollm2-135m:iq4_nl")
    assert pool.installed() == dict.fromkeys(members + ladder, False)
    with pytest.raises(UserError, match=r"Q4_0 GGUF .* not made yet; run `polyplan models install smollm2`"):
        pool.drafter("smollm2-135m:q4_0")
    with pytest.raises(UserError, match=r"not installed; run `polyplan models install smollm2`"):
        pool.drafter("smollm2-135m:bf16")
    with pytest.raises(UserError, match=r"not installed; run `polyplan models install smollm2`"):
        pool.drafter("prompt-lookup")  # needs the target's vocabulary size
    assert not (tmp_path / "empty-cache" / "models").exists()


def test_cuda_member_without_cuda_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    save_tiny(tmp_path / "big")
    path = tmp_path / "p.toml"
    path.write_text('[pool]\ntarget = "big"\n[[member]]\nname = "big"\nsource = "dir:big"\ndevice = "cuda"\n')
    with pytest.raises(UserError, match="wants device cuda but torch sees no CUDA device"):
        load_pool(path).drafter("big")


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from polyplan import cli

    monkeypatch.setattr(sys, "argv", ["polyplan", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_cli_errors_are_one_line(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "models", "install", "no-such-pool")
    assert code == 2 and err.count("\n") == 1 and "unknown pool 'no-such-pool'" in err
    monkeypatch.setenv("POLYPLAN_CACHE", str(tmp_path / "empty"))
    code, _, err = run_cli(monkeypatch, capsys, "models", "check", "smollm2")
    assert (
        code == 2
        and err.strip() == "polyplan: error: model smollm2-135m is not installed; run `polyplan models install smollm2`"
    )


def test_cli_list_shows_members_and_install_state(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("POLYPLAN_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("COLUMNS", "200")
    from typer.testing import CliRunner

    from polyplan.cli import root

    result = CliRunner().invoke(root, ["models", "list", "smollm2"])
    assert result.exit_code == 0, result.output
    assert "smollm2-135m:int8" in result.output and "prompt-lookup" in result.output
    assert "install with: polyplan models install smollm2" in result.output


@pytest.mark.parametrize("derivation, min_agreement", [("int8", 0.9), ("int8-dynamic", 0.6)])
def test_torchao_derivations_quantize_linear_layers(derivation, min_agreement):
    from polyplan.weights.derive import apply_derivation

    model = tiny_llama(vocab_size=64, hidden_size=64)
    ids = torch.arange(20).view(1, -1) % 64
    ref = model(ids).logits
    apply_derivation(model, derivation)
    weight = model.model.layers[0].self_attn.q_proj.weight
    assert "Int8" in type(weight).__name__
    out = model(ids).logits
    assert out.shape == ref.shape
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= min_agreement


def test_gguf_source_cache_reuse_and_corruption(tmp_path, monkeypatch):
    """A gguf: member is converted once into the cache; a cache whose weights file is damaged
    (same size) fails to load with the fix named, and `check` catches it by hash."""
    from polyplan.weights import source_cache

    monkeypatch.setenv("POLYPLAN_CACHE", str(tmp_path / "cache"))
    conversions = []

    def fake_convert(gguf, out_dir, dtype):  # no tiny GGUF writer here: the conversion is faked
        conversions.append(gguf.name)
        save_tiny(out_dir, WORDS)

    monkeypatch.setattr(source_cache, "convert_gguf", fake_convert)
    (tmp_path / "m.gguf").write_bytes(b"GGUF fake")
    path = tmp_path / "p.toml"
    path.write_text('[pool]\ntarget = "m"\n[[member]]\nname = "m"\nsource = "gguf:m.gguf"\n')
    pool = load_pool(path)
    with pytest.raises(UserError, match=rf"not installed; run `polyplan models install {path}`"):
        pool.drafter("m")
    pool.install()
    pool.install()
    assert conversions == ["m.gguf"]
    assert pool.drafter("m").vocab_size == 16

    entry = next((tmp_path / "cache" / "models").iterdir())
    weights = entry / "model.safetensors"
    weights.write_bytes(b"\xff" * weights.stat().st_size)
    fresh = load_pool(path)
    with pytest.raises(UserError, match=r"model cache .* cannot be loaded .*--force"):
        fresh.drafter("m")
    with pytest.raises(UserError, match=r"fails its sha256 check.*polyplan models install .*--force"):
        fresh.check()
    fresh.install(force=True)
    assert conversions == ["m.gguf", "m.gguf"]
    assert load_pool(path).drafter("m").vocab_size == 16


def test_ngram_member_fits_on_fit_prompts_once_and_caches(tmp_path, monkeypatch):
    from polyplan.data import load_prompts
    from polyplan.weights import ngram_fit

    monkeypatch.setenv("POLYPLAN_CACHE", str(tmp_path / "cache"))
    save_tiny(tmp_path / "big", WORDS)
    path = tmp_path / "p.toml"
    path.write_text(
        '[pool]\ntarget = "big"\n[[member]]\nname = "big"\nsource = "dir:big"\n'
        '[[member]]\nname = "ng"\nsource = "ngram"\norder = 3\nfit_prompts = 3\nmax_new_tokens = 6\n'
    )
    seen_texts = []
    real = ngram_fit.greedy_generations

    def spy(model, tokenizer, texts, max_new_tokens, log=None):
        seen_texts.extend(texts)
        return real(model, tokenizer, texts, max_new_tokens, log)

    monkeypatch.setattr(ngram_fit, "greedy_generations", spy)
    pool = load_pool(path)
    ng = pool.drafter("ng")
    fit_texts = {p.text for p in load_prompts(split="fit")}
    assert len(seen_texts) == 3 and set(seen_texts) <= fit_texts  # never eval prompts
    assert ng.point_mass and ng.table.order == 3 and len(ng.table) > 0
    (table_file,) = (tmp_path / "cache" / "ngram").iterdir()
    assert json_schema(table_file) == "polyplan.ngram-table"
    # a fresh pool object reuses the cached table: no generation
    again = load_pool(path).drafter("ng")
    assert len(seen_texts) == 3 and again.table.best_next == ng.table.best_next
    # with nothing to copy from the context, proposals come from the fitted table
    for key, nxt in list(ng.table.best_next.items())[:20]:
        ng.reset()
        assert ng.propose(list(key), 1) == [nxt]


def json_schema(path: Path) -> str:
    import json

    return json.loads(path.read_text())["schema"]


def test_ngram_fits_on_a_prompt_file_from_the_pool_file_or_models_install(tmp_path, monkeypatch):
    from polyplan.weights import ngram_fit

    monkeypatch.setenv("POLYPLAN_CACHE", str(tmp_path / "cache"))
    save_tiny(tmp_path / "big", WORDS)
    (tmp_path / "fit.txt").write_text("w1 w2 w3\nw4 w5\n")
    (tmp_path / "other.jsonl").write_text('{"text": "w6 w7", "category": "x"}\n{"turns": ["w8", "w9"]}\n')
    path = tmp_path / "p.toml"
    path.write_text(
        '[pool]\nname = "fitpool"\ntarget = "big"\n[[member]]\nname = "big"\nsource = "dir:big"\n'
        '[[member]]\nname = "ng"\nsource = "ngram"\norder = 2\nmax_new_tokens = 4\nfit_prompts_file = "fit.txt"\n'
    )
    seen: list[list[str]] = []
    real = ngram_fit.greedy_generations

    def spy(model, tokenizer, texts, max_new_tokens, log=None):
        seen.append(list(texts))
        return real(model, tokenizer, texts, max_new_tokens, log)

    monkeypatch.setattr(ngram_fit, "greedy_generations", spy)
    pool = load_pool(path)
    assert f"fit_prompts_file={tmp_path / 'fit.txt'}" in pool.member("ng").describe()
    pool.drafter("ng")
    assert seen == [["w1 w2 w3", "w4 w5"]]  # relative to the pool file, not the working directory
    table_doc = json.loads(ngram_fit.table_path(pool.ngram_fit("ng"))[0].read_text())
    assert table_doc["workload"]["name"] == "fit.txt" and table_doc["workload"]["count"] == 2
    # models install --fit-prompts FILE: fitted now, and every later load of the pool uses it
    pool.install(fit_prompts=tmp_path / "other.jsonl")
    assert seen[-1] == ["w6 w7", "w8"]
    again = load_pool(path)
    assert "other.jsonl" in again.member("ng").describe()
    again.drafter("ng")
    assert len(seen) == 2  # cached: no refit
    # 'built-in' forgets the recorded file: the pool file's choice applies again
    load_pool(path).install(fit_prompts="built-in")
    assert "fit.txt" in load_pool(path).member("ng").describe() and len(seen) == 2
    # a bad file is one error naming the line, before anything is fitted or recorded
    (tmp_path / "bad.jsonl").write_text('{"text": "w1"}\n{"turns": []}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2: \"turns\" is empty"):
        load_pool(path).install(fit_prompts=tmp_path / "bad.jsonl")
    assert "fit.txt" in load_pool(path).member("ng").describe()
    path.write_text(path.read_text().replace('"fit.txt"', "3"))
    with pytest.raises(UserError, match="fit_prompts_file must be a string"):
        load_pool(path)
