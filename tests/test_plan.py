"""The plan document: round trip, refusals, and exports an engine accepts."""

from __future__ import annotations

import json

import pytest

from polyplan.documents import DocumentError, Plan
from polyplan.planner import optimize

from test_planner import THREE_LEVEL_ALPHAS, THREE_LEVEL_COSTS, make_profile, save


@pytest.fixture
def plan_path(tmp_path):
    plan, _ = optimize(save(tmp_path, make_profile(THREE_LEVEL_COSTS, THREE_LEVEL_ALPHAS)), top=3)
    path = tmp_path / "plan.json"
    plan.save(path)
    return path


def test_round_trip(plan_path):
    plan = Plan.load(plan_path)
    assert plan.to_dict() == json.loads(plan_path.read_text())
    again = plan_path.parent / "again.json"
    plan.save(again)
    assert again.read_text() == plan_path.read_text()
    assert plan.names == ["target", "mid", "tiny"] and plan.target == "target" and plan.mode == "greedy"


def test_saved_files_get_the_mode_of_a_plain_write(plan_path):
    """Atomic writes go through mkstemp (mode 0600): the published file must still be readable by
    whoever could read a plainly written one (0666 minus the umask)."""
    import os

    plain = plan_path.parent / "plain.json"
    plain.write_text("{}")
    assert plan_path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    assert os.access(plan_path, os.R_OK)


def test_newer_version_is_refused(plan_path):
    doc = json.loads(plan_path.read_text())
    doc["version"] = 99
    plan_path.write_text(json.dumps(doc))
    with pytest.raises(DocumentError, match="newer"):
        Plan.load(plan_path)


def test_truncated_file_is_refused(plan_path):
    text = plan_path.read_text()
    plan_path.write_text(text[: len(text) // 2])
    with pytest.raises(DocumentError, match="truncated"):
        Plan.load(plan_path)


def test_other_schema_is_refused(plan_path):
    doc = json.loads(plan_path.read_text())
    doc["schema"] = "polyplan.profile"
    plan_path.write_text(json.dumps(doc))
    with pytest.raises(DocumentError, match="expected a polyplan.plan"):
        Plan.load(plan_path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(gammas=[3]), "needs 2 gammas"),
        (lambda d: d.update(gammas=[0, 2]), ">= 1"),
        (lambda d: d["chain"][1].update(point_mass=True), "bottom"),
        (lambda d: d["prediction"].update(time_per_token_s=-1.0), "positive"),
        (lambda d: d.pop("chain"), "malformed"),
        (lambda d: d["settings"].update(mode="beam"), "mode"),
    ],
)
def test_invalid_plans_are_refused(plan_path, edit, message):
    doc = json.loads(plan_path.read_text())
    edit(doc)
    plan_path.write_text(json.dumps(doc))
    with pytest.raises(DocumentError, match=message):
        Plan.load(plan_path)


def test_transformers_export_is_accepted_by_generation_config(plan_path):
    from transformers import GenerationConfig

    hf = Plan.load(plan_path).exports["transformers"]
    assert hf["target_model"] == "org/target" and hf["assistant_model"] in ("org/mid", "org/tiny")
    cfg = GenerationConfig(**hf["generate_kwargs"], **hf["assistant_generation_config"])
    assert cfg.num_assistant_tokens == hf["assistant_generation_config"]["num_assistant_tokens"] >= 1
    assert cfg.num_assistant_tokens_schedule == "constant"
    sub = Plan.load(plan_path).exports["sub_plan"]
    assert sub["chain"][1] == hf["assistant_model"].split("/")[1]
    assert sub["gammas"] == [hf["assistant_generation_config"]["num_assistant_tokens"]]


VLLM_FIELDS = {"method", "model", "num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min"}


def test_vllm_export_is_well_formed(plan_path):
    v = Plan.load(plan_path).exports["vllm"]
    assert v["model"] == "org/target"
    cfg = v["speculative_config"]
    assert set(cfg) <= VLLM_FIELDS
    assert cfg["method"] == "draft_model" and cfg["model"].startswith("org/")
    assert isinstance(cfg["num_speculative_tokens"], int) and cfg["num_speculative_tokens"] >= 1
    json.dumps(v)  # plain JSON, pasteable into --speculative-config


def test_ngram_exports(tmp_path):
    from transformers import GenerationConfig

    costs = {"target": 1.0, "ngram": 0.0005}
    prof = make_profile(costs, {("target", "ngram"): 0.6}, point_mass=("ngram",))
    plan, _ = optimize(save(tmp_path, prof))
    assert plan.names == ["target", "ngram"]
    g = plan.gammas[0]
    hf = plan.exports["transformers"]
    assert hf["assistant_model"] is None and hf["generate_kwargs"]["prompt_lookup_num_tokens"] == g
    GenerationConfig(**hf["generate_kwargs"])
    cfg = plan.exports["vllm"]["speculative_config"]
    assert cfg["method"] == "ngram" and cfg["num_speculative_tokens"] == g
    assert set(cfg) <= VLLM_FIELDS and cfg["prompt_lookup_min"] <= cfg["prompt_lookup_max"]


def test_autoregressive_plan_has_nothing_to_export(tmp_path):
    costs = {"target": 1.0, "slow": 0.9}
    plan, _ = optimize(save(tmp_path, make_profile(costs, {("target", "slow"): 0.2})))
    assert plan.names == ["target"] and plan.gammas == []
    assert "transformers" not in plan.exports and "nothing to export" in plan.exports["note"]
    assert plan.insertion[0]["model"] == "slow" and plan.insertion[0]["gain"] < 1
