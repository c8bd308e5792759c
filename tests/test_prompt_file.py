"""Prompt files: both formats, the detection rule, and one clear error per kind of bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from polyplan.data import Prompt
from polyplan.data.prompt_file import (
    PromptFileError,
    builtin_prompt_set,
    check_prompt_fits,
    describe_workload,
    prompt_set,
    read_prompt_file,
)
from polyplan.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def jsonl(*records: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def test_jsonl_with_text_turns_category_and_id(tmp_path):
    path = write(
        tmp_path,
        "mine.jsonl",
        jsonl(
            {"id": "a", "category": "math", "text": "What is 2 + 2?", "answer": "4"},
            "",
            {"turns": ["Write a haiku.", "Now make it rhyme."], "category": "writing"},
            {"id": 7, "text": "Hello"},
        ),
    )
    ps = read_prompt_file(path)
    assert [p.id for p in ps.prompts] == ["a", "mine-3", "7"]
    assert [p.category for p in ps.prompts] == ["math", "writing", "uncategorized"]
    assert ps.prompts[1].text == "Write a haiku." and ps.prompts[1].turns == ("Now make it rhyme.",)
    assert ps.prompts[0].origin == f"{path}:1" and ps.prompts[2].origin == f"{path}:4"
    assert ps.name == "mine.jsonl" and ps.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    w = ps.workload(ps.select(limit=2))
    assert w == {"name": "mine.jsonl", "sha256": ps.sha256, "count": 2, "categories": {"math": 1, "writing": 1}}
    assert "2 prompts of mine.jsonl" in describe_workload(w)


def test_plain_text_one_prompt_per_line_and_the_detection_rule(tmp_path):
    text = "Translate 'good morning' into French.\n\n  Explain recursion briefly.\r\n{ a line of code } is text too\n"
    ps = read_prompt_file(write(tmp_path, "list.txt", text))
    assert [p.text for p in ps.prompts] == [
        "Translate 'good morning' into French.",
        "  Explain recursion briefly.",
        "{ a line of code } is text too",
    ]
    assert [p.id for p in ps.prompts] == ["list-1", "list-3", "list-4"]
    # no telling suffix: the first non-blank line decides
    assert read_prompt_file(write(tmp_path, "p.prompts", text)).prompts[0].text.startswith("Translate")
    as_json = read_prompt_file(write(tmp_path, "q.prompts", "\n" + jsonl({"text": "hi"})))
    assert as_json.prompts[0].text == "hi"
    # a .jsonl name is JSONL even when the first line is not an object: that line is an error
    with pytest.raises(PromptFileError, match=r"r\.jsonl:1: not JSON"):
        read_prompt_file(write(tmp_path, "r.jsonl", text))


def test_builtin_set_is_the_default_and_has_an_identity():
    ps = prompt_set(None)
    assert ps == builtin_prompt_set("eval") and ps.name == "built-in"
    assert all(p.split == "eval" and p.origin.startswith("built-in prompts.jsonl:") for p in ps.prompts)
    assert ps.sha256 == hashlib.sha256((ROOT / "polyplan/data/prompts.jsonl").read_bytes()).hexdigest()
    assert builtin_prompt_set("fit").prompts[0].split == "fit"


@pytest.mark.parametrize(
    "content, message",
    [
        ("", r"empty\.jsonl: the prompt file is empty"),
        ("\n  \n\n", r"empty\.jsonl: the prompt file is empty"),
        (jsonl({"text": "ok"}, "this is not json"), r"empty\.jsonl:2: not JSON"),
        (jsonl({"text": "ok"}, {"text": "x"}, '{"text": "cut'), r"empty\.jsonl:3: not JSON"),
        (jsonl(["a list"]), r":1: expected a JSON object .* found list"),
        (jsonl({"turns": "one string"}), r":1: \"turns\" must be a list of strings, found str"),
        (jsonl({"turns": []}), r":1: \"turns\" is empty"),
        (jsonl({"text": "ok"}, {"turns": ["ok", 3]}), r":2: turn 2 of \"turns\" is not a non-empty string"),
        (jsonl({"prompt": "hi", "category": "x"}), r":1: no \"text\" or \"turns\" \(keys found: category, prompt\)"),
        (jsonl({"text": "a", "turns": ["b"]}), r":1: give \"text\" or \"turns\", not both"),
        (jsonl({"text": "  "}), r":1: \"text\" must be a non-empty string"),
        (jsonl({"text": "a", "category": 3}), r":1: \"category\" must be a non-empty string"),
        (jsonl({"text": "a", "id": ["x"]}), r":1: \"id\" must be a non-empty string or an integer"),
        (
            jsonl({"text": "a", "id": "x"}, {"text": "b"}, {"text": "c", "id": "x"}),
            r":3: id 'x' is used again \(first at .*:1\)",
        ),
    ],
)
def test_bad_jsonl_is_one_error_naming_file_and_line(tmp_path, content, message):
    path = write(tmp_path, "empty.jsonl", content)
    with pytest.raises(PromptFileError, match=message) as info:
        read_prompt_file(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_text_that_is_neither_json_nor_text(tmp_path):
    with pytest.raises(PromptFileError, match=r"bin\.txt:2: not UTF-8"):
        read_prompt_file(write(tmp_path, "bin.txt", b"fine\n\xff\xfe bad\n"))
    with pytest.raises(PromptFileError, match=r"nul\.txt:3: binary data"):
        read_prompt_file(write(tmp_path, "nul.txt", b"a\nb\nc\x00d\n"))
    with pytest.raises(PromptFileError, match=r"mixed\.txt:2: a JSON prompt record in a plain-text prompt file"):
        read_prompt_file(write(tmp_path, "mixed.txt", "plain prompt\n" + jsonl({"text": "json prompt"})))
    # a UTF-8 byte-order mark is not part of the first prompt
    assert read_prompt_file(write(tmp_path, "bom.txt", "\ufeffHello\n".encode())).prompts[0].text == "Hello"


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(PromptFileError, match="no such prompt file"):
        read_prompt_file(tmp_path / "nope.jsonl")
    with pytest.raises(PromptFileError, match="is a directory"):
        read_prompt_file(tmp_path)


def test_categories_select_round_robin_and_unknown_category(tmp_path):
    path = write(
        tmp_path,
        "c.jsonl",
        jsonl(*({"id": f"{c}{i}", "category": c, "text": f"{c} {i}"} for c in ("a", "b") for i in range(3))),
    )
    ps = read_prompt_file(path)
    assert [p.id for p in ps.select(limit=3)] == ["a0", "b0", "a1"]
    assert [p.id for p in ps.select(categories=["b"], limit=2)] == ["b0", "b1"]
    with pytest.raises(UserError, match="unknown prompt categories c"):
        ps.select(categories=["c"])


def test_prompt_longer_than_the_context_names_file_and_line():
    p = Prompt("x", "qa", "file", "long", (), "my.jsonl:12")
    check_prompt_fits(p, 500, 512, 12, "target")
    check_prompt_fits(p, 10**6, None, 64, "lookup")
    with pytest.raises(
        PromptFileError, match=r"my\.jsonl:12: prompt 'x' needs 510 tokens \+ 3 new but target holds 512"
    ):
        check_prompt_fits(p, 510, 512, 3, "target")


def test_long_prompt_files_parse_and_are_long():
    """benchmarks/prompts/long: 500-3000 tokens each (about 3.3-4.5 characters a token)."""
    files = sorted((ROOT / "benchmarks" / "prompts" / "long").glob("*.jsonl"))
    assert [f.name for f in files] == ["code.jsonl", "rag.jsonl", "summarization.jsonl"]
    for f in files:
        ps = read_prompt_file(f)
        assert len(ps.prompts) == 8 and len({p.category for p in ps.prompts}) == 1
        assert all(1500 < len(p.text) < 13_500 for p in ps.prompts), f.name


def test_shipped_mechanism_prompt_files_parse_with_categories_and_ids():
    files = sorted((ROOT / "benchmarks" / "prompts").glob("*.jsonl"))
    assert len(files) >= 3
    for f in files:
        ps = read_prompt_file(f)
        cats = {p.category for p in ps.prompts}
        for cat in cats:
            assert 6 <= sum(p.category == cat for p in ps.prompts) <= 10, (f.name, cat)
        assert all(json.loads(line).keys() >= {"id", "category"} for line in f.read_text().splitlines() if line.strip())


def test_sample_prompt_files_are_drawn_verbatim_from_the_mechanism_sets():
    shipped = {}
    for f in [
        *(ROOT / "benchmarks" / "prompts").glob("*.jsonl"),
        *(ROOT / "benchmarks" / "prompts" / "long").glob("*.jsonl"),
    ]:
        shipped.update({p.id: p.text for p in read_prompt_file(f).prompts})
    samples = sorted((ROOT / "benchmarks" / "prompts" / "samples").glob("*.jsonl"))
    assert samples
    for f in samples:
        for p in read_prompt_file(f).prompts:
            assert shipped.get(p.id) == p.text, (f.name, p.id)


# ---- issue 20 item 7 ---------------------------------------------------------------------------------


def test_a_json_array_file_is_read_as_prompts(tmp_path):
    f = tmp_path / "prompts.json"
    f.write_text(json.dumps([{"text": "one", "category": "a"}, {"turns": ["two", "later"], "id": 7}]))
    ps = read_prompt_file(f)
    assert [p.text for p in ps.prompts] == ["one", "two"] and ps.prompts[1].id == "7"
    f.write_text(json.dumps([{"text": "one"}, {"nope": 1}]))
    with pytest.raises(PromptFileError, match=r"prompts\.json: item 2: no \"text\" or \"turns\""):
        read_prompt_file(f)
    f.write_text("[]")
    with pytest.raises(PromptFileError, match="non-empty array"):
        read_prompt_file(f)


def test_split_marks_which_prompts_profile_and_fit_use(tmp_path):
    from polyplan.data.prompt_file import prompt_set

    f = tmp_path / "mixed.jsonl"
    rows = [{"text": "e1", "split": "eval"}, {"text": "f1", "split": "fit"}, {"text": "both"}]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    assert [p.text for p in prompt_set(f, "eval").prompts] == ["e1", "both"]
    assert [p.text for p in prompt_set(f, "fit").prompts] == ["f1", "both"]
    f.write_text(json.dumps({"text": "x", "split": "train"}))
    with pytest.raises(PromptFileError, match='"split" must be "eval" or "fit"'):
        read_prompt_file(f)
    f.write_text(json.dumps({"text": "only fit", "split": "fit"}))
    with pytest.raises(PromptFileError, match="no prompt of split 'eval'"):
        prompt_set(f, "eval")


def test_form_feed_and_escape_are_text(tmp_path):
    f = tmp_path / "code.jsonl"
    f.write_text(json.dumps({"text": "def f():\n\x0c    pass  # \x1b[31mred\x1b[0m"}))
    assert "\x0c" in read_prompt_file(f).prompts[0].text
    f.write_text("plain \x1b[1mbold\x1b[0m line\n")
    f = f.rename(tmp_path / "code.txt")
    assert read_prompt_file(f).prompts[0].text.startswith("plain")


def test_profiling_on_the_ngram_fit_file_warns(tmp_path):
    from polyplan.commands.profile import fit_overlap_warnings
    from polyplan.weights.pools import _pool_from_text

    f = tmp_path / "mine.jsonl"
    f.write_text("\n".join(json.dumps({"text": t}) for t in ("a b c", "d e f")))
    pool_text = "\n".join(
        [
            "[pool]",
            'name = "p"',
            'target = "t"',
            "[[member]]",
            'name = "t"',
            'source = "smollm2-135m"',
            "[[member]]",
            'name = "ngram"',
            'source = "ngram"',
            'fit_prompts_file = "mine.jsonl"',
        ]
    )
    pool = _pool_from_text(pool_text, str(tmp_path / "p.toml"), tmp_path, "install")
    (warning,) = fit_overlap_warnings(pool, ["t", "ngram"], f)
    assert "fitted on 2 of the prompts profiled here" in warning
    assert fit_overlap_warnings(pool, ["t", "ngram"], None) == []
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"text": "z"}))
    assert fit_overlap_warnings(pool, ["t", "ngram"], other) == []
