"""`polyplan run` end to end on tiny model directories (saved tiny Llamas + a word-level tokenizer)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_models import perturbed_copy, tiny_llama

WORDS = ["<s>", "</s>"] + [f"w{i}" for i in range(30)]


def save_model_dir(model, path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="w0")
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    target = tiny_llama(vocab_size=len(WORDS), num_layers=2, seed=1, logit_scale=3.0)
    draft = perturbed_copy(target, 0.01, seed=2)
    return save_model_dir(target, root / "target"), save_model_dir(draft, root / "draft"), target


def polyplan(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "polyplan.cli", *args], input=stdin, capture_output=True, text=True, timeout=300
    )


def test_run_json_matches_target_generate(model_dirs):
    target_dir, draft_dir, target = model_dirs
    out = polyplan(
        "run", "w3 w4 w5", "--chain", f"{target_dir},{draft_dir}", "--gammas", "3", "--max-new-tokens", "12", "--json"
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["gammas"] == [3] and len(doc["chain"]) == 2
    ids = torch.tensor([[3 + 2, 4 + 2, 5 + 2]])
    ref = target.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False, eos_token_id=1, pad_token_id=1
    )[0, 3:].tolist()
    assert doc["tokens"] == ref
    assert doc["stats"]["levels"][0]["num_drafts"] >= 1


def test_run_streams_text_from_stdin_with_stats(model_dirs):
    from transformers import PreTrainedTokenizerFast

    target_dir, draft_dir, target = model_dirs
    sampling = [
        "--chain",
        f"{target_dir},{draft_dir}",
        "--gammas",
        "2",
        "--max-new-tokens",
        "16",
        "--temperature",
        "2.0",
        "--top-k",
        "2",
        "--seed",
        "5",
    ]
    out = polyplan("run", *sampling, "--stats", stdin="w7 w8")
    assert out.returncode == 0, out.stderr
    doc = json.loads(polyplan("run", *sampling, "--json", stdin="w7 w8").stdout)
    assert len(doc["tokens"]) == 16
    # the streamed text is the whole generation (same seed: the same tokens as the JSON run)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(target_dir)
    assert out.stdout.strip() == tokenizer.decode(doc["tokens"], skip_special_tokens=True).strip()
    assert f"{doc['stats']['new_tokens']} tokens in" in out.stderr and "accept len" in out.stderr
    # --top-k reached the sampler: every token is among the target's 2 most likely at its position
    # (without it, at temperature 2 all 16 would be with probability about 0.58^16)
    ids = torch.tensor([tokenizer("w7 w8")["input_ids"] + doc["tokens"]])
    with torch.no_grad():
        logits = target(ids).logits[0, 1:-1]
    top2 = logits.topk(2, dim=-1).indices
    assert all(t in row.tolist() for t, row in zip(doc["tokens"], top2, strict=True)), (doc["tokens"], top2)


def test_run_reads_top_k_0_and_top_p_1_as_off(model_dirs, capsys):
    from polyplan.commands.run import run_command

    target_dir, draft_dir, _ = model_dirs
    outputs = []
    for top_k, top_p in [(None, None), (0, 1.0)]:
        run_command(
            args=["w1 w2"],
            pool=None,
            chain=f"{target_dir},{draft_dir}",
            gammas="2",
            tree_nodes=None,
            plan=None,
            prompt_file=None,
            chat=False,
            max_new_tokens=12,
            temperature=1.5,
            top_k=top_k,
            top_p=top_p,
            seed=4,
            stats=False,
            as_json=True,
            window=None,
        )
        outputs.append(json.loads(capsys.readouterr().out)["tokens"])
    assert outputs[0] == outputs[1] and len(outputs[0]) == 12


def test_run_with_a_draft_tree_reports_it(model_dirs):
    target_dir, draft_dir, _ = model_dirs
    chain = f"{target_dir},{draft_dir}"
    common = ("--chain", chain, "--gammas", "3", "--max-new-tokens", "12", "--json")
    tree = polyplan("run", "w1 w2", *common, "--tree-nodes", "6", "--stats")
    linear = polyplan("run", "w1 w2", *common)
    assert tree.returncode == 0 and linear.returncode == 0, tree.stderr
    doc = json.loads(tree.stdout)
    assert doc["tree_nodes"] == [6] and doc["tokens"] == json.loads(linear.stdout)["tokens"]
    assert doc["stats"]["levels"][1]["tree_rounds"] > 0
    assert "trees at level 2" in tree.stderr


def test_run_bad_input_is_one_line(model_dirs):
    target_dir, draft_dir, _ = model_dirs
    out = polyplan("run", "w1", "--chain", f"{target_dir},{draft_dir}", "--gammas", "3,2")
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("polyplan: error:")]
    assert len(lines) == 1 and "needs 1 gammas" in lines[0], out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(gammas="0"), "gamma"),
        (dict(gammas="x"), "comma-separated"),
        (dict(gammas="3", prompt_file=Path("/nonexistent/prompt.txt")), "cannot read"),
        (dict(gammas="3", args=["w1", "w2"]), "at most one prompt"),
        (dict(gammas="3", max_new_tokens=10_000), "exceed the context"),
        (dict(gammas="3", tree_nodes="x"), "--tree-nodes must be comma-separated"),
        (dict(gammas="3", tree_nodes="0"), r"level 2 .*tree_nodes must be an integer >= 1"),
        (dict(gammas="3", tree_nodes="4,4"), "needs 1 tree sizes"),
    ],
)
def test_run_bad_input_raises_user_error(model_dirs, kwargs, message):
    from polyplan.commands.run import run_command
    from polyplan.errors import UserError

    target_dir, draft_dir, _ = model_dirs
    call = dict(
        args=["w1"],
        pool=None,
        chain=f"{target_dir},{draft_dir}",
        gammas=None,
        tree_nodes=None,
        plan=None,
        prompt_file=None,
        chat=False,
        max_new_tokens=4,
        temperature=None,
        top_k=None,
        top_p=None,
        seed=0,
        stats=False,
        as_json=True,
        window=None,
    )
    call.update(kwargs)
    if call["prompt_file"] is not None:
        call["args"] = None
    with pytest.raises(UserError, match=message):
        run_command(**call)
