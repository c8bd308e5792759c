"""`polyplan profile` end to end on a pool file of tiny random models saved to disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from polyplan.documents.profile import Profile
from polyplan.errors import UserError

from tiny_models import tiny_llama

VOCAB = 64


def _tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1}
    for i in range(2, VOCAB):
        vocab[chr(ord("a") + (i - 2) % 26) * (1 + (i - 2) // 26)] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>").save_pretrained(path)


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tinypool")
    for name, seed, vocab in (("big", 0, VOCAB), ("small", 1, VOCAB), ("alien", 2, VOCAB // 2)):
        model = tiny_llama(vocab_size=vocab, seed=seed, logit_scale=4.0, max_position_embeddings=512)
        model.save_pretrained(root / name)
        _tokenizer(root / name)
    (root / "pool.toml").write_text(
        '[pool]\nname = "tiny"\ntarget = "big"\n\n'
        '[[member]]\nname = "big"\nsource = "dir:big"\n\n'
        '[[member]]\nname = "small"\nsource = "dir:small"\n\n'
        '[[member]]\nname = "small-bf16"\nsource = "dir:small"\ndtype = "bfloat16"\n\n'
        '[[member]]\nname = "alien"\nsource = "dir:alien"\n\n'
        '[[member]]\nname = "prompt-lookup"\nsource = "prompt-lookup"\n'
    )
    return root / "pool.toml"


FAST = [
    "--prompts",
    "2",
    "--max-new-tokens",
    "8",
    "--new-tokens",
    "1,4",
    "--contexts",
    "0,16",
    "--repeats",
    "2",
    "--warmup",
    "0",
    "--no-screen",  # same-size tiny models: which is slower is noise
]


def polyplan(*args: str):
    """In-process run (fast); a UserError comes back as ``result.exception``."""
    from typer.testing import CliRunner

    from polyplan.cli import root

    return CliRunner().invoke(root, list(args))


def polyplan_subprocess(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polyplan.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_profiles_resumes_and_refuses_bad_input(pool_file, tmp_path):
    out = tmp_path / "tiny.json"
    members = ["--members", "big,small,small-bf16,prompt-lookup"]
    # a zero budget saves an empty, incomplete profile; the rerun resumes and completes it
    first = polyplan("profile", "--pool", str(pool_file), "-o", str(out), *members, *FAST, "--budget", "0")
    assert first.exit_code == 0, first.output
    assert not Profile.load(out).complete
    done = polyplan("profile", "--pool", str(pool_file), "-o", str(out), *members, *FAST)
    assert done.exit_code == 0, done.output
    prof = Profile.load(out)
    assert prof.complete and set(prof.latency) == {"big", "small", "small-bf16", "prompt-lookup"}
    assert prof.candidate("small-bf16").dtype == "bfloat16" and prof.candidate("prompt-lookup").point_mass
    assert prof.pair("big", "prompt-lookup").positions == 16
    assert (tmp_path / "tiny.traces.npz").exists()
    assert "acceptance" in done.output

    before = out.read_bytes()
    for args, needle in (
        (["--members", "big,nope"], "no member 'nope'"),
        (["--members", "big,alien"], "vocabulary"),
        (["--members", "big,small,small-bf16,prompt-lookup", "--max-new-tokens", "9"], "--force"),
    ):
        bad = polyplan("profile", "--pool", str(pool_file), "-o", str(out), *FAST[:2], *args)
        assert isinstance(bad.exception, UserError) and needle in str(bad.exception), (args, bad.output)
        assert out.read_bytes() == before

    truncated = tmp_path / "cut.json"
    truncated.write_bytes(before[: len(before) // 3])
    # through the real entry point: exit 2, one line on stderr, no traceback
    bad = polyplan_subprocess("profile", "--pool", str(pool_file), "-o", str(truncated), *FAST)
    assert bad.returncode == 2 and "truncated" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert truncated.read_bytes() == before[: len(before) // 3]

    shown = polyplan("profile", "--show", "-o", str(out))
    assert shown.exit_code == 0 and "greedy acceptance" in shown.output


def test_cli_random_weights_marks_candidates_and_skips_acceptance(pool_file, tmp_path):
    out = tmp_path / "random.json"
    res = polyplan(
        "profile", "--pool", str(pool_file), "-o", str(out), "--members", "big,small", *FAST, "--random-weights"
    )
    assert res.exit_code == 0, res.output
    prof = Profile.load(out)
    assert all(c.random_weights for c in prof.candidates) and not prof.pairs
    assert prof.settings["random_weights"] is True and prof.complete


def test_the_profile_options_default_to_the_profile_settings():
    """The command line does not import the profiling session (it loads torch), so its option
    defaults are written out; they must be ProfileSettings' own (a list as its comma text)."""
    from dataclasses import fields

    import typer

    from polyplan.cli import root
    from polyplan.profiler.session import ProfileSettings

    command = typer.main.get_command(root).commands["profile"]
    settings = ProfileSettings()
    shared = {f.name for f in fields(ProfileSettings)} & {p.name for p in command.params}
    assert len(shared) >= 18
    for param in command.params:
        if param.name in shared:
            want = getattr(settings, param.name)
            want = ",".join(map(str, want)) if isinstance(want, list) else want
            assert param.default == want, param.name
