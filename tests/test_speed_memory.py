"""The members' speeds carried from one `polyplan run` process to the next (documents/speeds.py):
the cache entry's round trip, what is not trusted, and, on the real pool, that a later run's start
prices the chain at what earlier runs measured (and ``--no-speed-memory`` at the profile's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from polyplan.documents.speeds import FADE_PER_HOUR, MAX_AGE_S, load_speeds, save_speeds, speeds_path
from polyplan.executor.guard import SPEED_MIN_PASSES, MemberSpeed

ROOT = Path(__file__).resolve().parents[1]
MACHINE = {"cpu": "a test CPU", "cpu_features": {"family": "25", "model": "17", "flags": ["avx2"]}, "usable_cores": 2}
NAMES = ["target", "draft"]


def _measured_speed() -> MemberSpeed:
    speed = MemberSpeed()
    for kind, member, measured, profiled in [("decode", 1, 1.0, 1.0)] + [("decode", 1, 0.012, 0.010)] * 5:
        speed.add(kind, member, measured, profiled)  # the first pass of a kind is cold: not counted
    for _ in range(4):
        speed.add("decode", 0, 0.030, 0.040)
    return speed


def test_member_speeds_survive_a_round_trip_through_the_cache(tmp_path):
    before = _measured_speed()
    path = tmp_path / "speeds.json"
    save_speeds(path, MACHINE, NAMES, before.evidence(NAMES))
    written = json.loads(path.read_text())["written_unix_s"]
    after = MemberSpeed()
    after.restore(NAMES, load_speeds(path, MACHINE, NAMES, now=written))
    for name, factor in before.factors(NAMES).items():
        assert after.factors(NAMES)[name] == pytest.approx(factor)
    assert after.factors(NAMES)["draft"]["decode"] == pytest.approx(1.2)
    assert after.factors(NAMES)["target"]["decode"] == pytest.approx(0.75)


def test_older_evidence_weighs_less_and_too_old_none(tmp_path):
    path = tmp_path / "speeds.json"
    save_speeds(path, MACHINE, NAMES, _measured_speed().evidence(NAMES))
    written = json.loads(path.read_text())["written_unix_s"]
    fresh = load_speeds(path, MACHINE, NAMES, now=written)
    two_hours = load_speeds(path, MACHINE, NAMES, now=written + 7200)
    assert two_hours["decode"]["draft"] == pytest.approx([x * FADE_PER_HOUR**2 for x in fresh["decode"]["draft"]])
    # the ratio (the speed factor) is kept; only its weight against newer passes falls
    e, f = two_hours["decode"]["draft"], fresh["decode"]["draft"]
    assert e[0] / e[1] == pytest.approx(f[0] / f[1])
    speed = MemberSpeed()
    speed.restore(NAMES, two_hours)
    assert speed.decode[1][2] < SPEED_MIN_PASSES <= f[2]
    assert load_speeds(path, MACHINE, NAMES, now=written + MAX_AGE_S + 1) is None
    assert load_speeds(path, MACHINE, NAMES, now=written - 60) is None  # written "in the future": a clock jump


@pytest.mark.parametrize(
    "change",
    [
        lambda doc: doc.update(machine={**MACHINE, "cpu": "another CPU"}),
        lambda doc: doc.update(members=["target", "other-draft"]),
        lambda doc: doc["decode"].update(draft=[1.0, -1.0, 3.0]),
        lambda doc: doc["decode"].update(draft=[1.0, 2.0]),
        lambda doc: doc["decode"].update(draft=[1.0, 0.0, 5.0]),
        lambda doc: doc.update(version=99),
        lambda doc: doc.update(decode=[1, 2, 3]),
    ],
    ids=[
        "other-cpu",
        "other-members",
        "negative",
        "short-entry",
        "no-profiled-seconds",
        "newer-version",
        "not-a-mapping",
    ],
)
def test_evidence_that_is_not_this_chains_on_this_cpu_is_ignored(tmp_path, change):
    path = tmp_path / "speeds.json"
    save_speeds(path, MACHINE, NAMES, _measured_speed().evidence(NAMES))
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    assert load_speeds(path, MACHINE, NAMES, now=doc["written_unix_s"]) is None


def test_a_truncated_or_missing_cache_entry_is_ignored(tmp_path):
    path = tmp_path / "speeds.json"
    assert load_speeds(path, MACHINE, NAMES) is None
    save_speeds(path, MACHINE, NAMES, _measured_speed().evidence(NAMES))
    path.write_text(path.read_text()[:40])
    assert load_speeds(path, MACHINE, NAMES) is None


def test_the_key_is_the_plans_content(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYPLAN_CACHE", str(tmp_path / "cache"))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text('{"x": 1}')
    b.write_text('{"x": 1}')
    assert speeds_path(a) == speeds_path(b) and speeds_path(a).parent == tmp_path / "cache" / "speeds"
    assert speeds_path(a, "my-pool.toml") != speeds_path(a)  # other weights under the same names
    b.write_text('{"x": 2}')
    assert speeds_path(a) != speeds_path(b)


def test_a_second_run_carries_the_first_runs_evidence_at_half_weight(tmp_path):
    """Run 1 measures E1 and keeps it; run 2 starts on it (its factors), halves it at its start as a
    later request in one process would, adds its own passes E2 and keeps 0.5 * E1 + E2."""
    path = tmp_path / "speeds.json"
    first = _measured_speed()
    save_speeds(path, MACHINE, NAMES, first.evidence(NAMES))
    written = json.loads(path.read_text())["written_unix_s"]
    second = MemberSpeed()
    second.restore(NAMES, load_speeds(path, MACHINE, NAMES, now=written))
    assert second.factors(NAMES)["draft"]["decode"] == pytest.approx(1.2)  # what its start prices at
    second.new_request()
    second.add("decode", 1, 1.0, 1.0)  # cold: this process's first pass
    for _ in range(4):
        second.add("decode", 1, 0.020, 0.010)
    e1 = first.evidence(NAMES)["decode"]["draft"]
    save_speeds(path, MACHINE, NAMES, second.evidence(NAMES))
    kept = load_speeds(path, MACHINE, NAMES, now=json.loads(path.read_text())["written_unix_s"])["decode"]["draft"]
    assert kept == pytest.approx([0.5 * e1[0] + 0.08, 0.5 * e1[1] + 0.04, 0.5 * e1[2] + 4])


PLAN = ROOT / "profiles" / "epyc-fam25" / "smollm2.plan.json"
PROMPT = "Write three sentences about the sea."


def _cache_without_speeds(tmp_path: Path) -> Path:
    """A cache root that sees the real cache's models but keeps its own speeds/ (the test's)."""
    from polyplan.cache import cache_root

    mine = tmp_path / "cache"
    mine.mkdir()
    for entry in cache_root().iterdir():
        if entry.name != "speeds":
            (mine / entry.name).symlink_to(entry)
    return mine


def _run(cache: Path, *extra: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "polyplan.cli", "run", str(PLAN), PROMPT, "--max-new-tokens", "16", "--json", *extra],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "POLYPLAN_CACHE": str(cache)},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.weights
def test_a_later_run_starts_at_the_speeds_earlier_runs_measured(smollm2_pool, tmp_path):
    if not smollm2_pool.installed().get("smollm2-135m:q8_0"):
        pytest.skip("the smollm2-135m:q8_0 GGUF is missing: run `polyplan models install smollm2`")
    cache = _cache_without_speeds(tmp_path)
    first = _run(cache)
    assert first["start_speed"] == {}  # nothing measured yet: the profile's costs
    drafter = first["chain"][1]
    assert drafter in first["stats"]["setting_changes"][0]["members"]  # the plan speculates here
    [entry] = (cache / "speeds").iterdir()
    doc = json.loads(entry.read_text())
    assert doc["decode"][drafter][2] >= SPEED_MIN_PASSES  # this run's passes, kept
    # pretend the earlier runs found the drafter 50x slower than profiled: the next start must
    # price it so and leave it out; without the memory the start is the profile's again
    doc["decode"][drafter] = [50.0 * 100 * 0.01, 100 * 0.01, 100.0]
    entry.write_text(json.dumps(doc))
    slowed = _run(cache)
    assert slowed["start_speed"][drafter]["decode"] == pytest.approx(50.0, rel=1e-6)
    assert drafter not in slowed["stats"]["setting_changes"][0]["members"]
    assert slowed["tokens"] == first["tokens"]
    # the slowed run never ran the drafter: what it kept of it is the earlier evidence, halved
    merged = json.loads(entry.read_text())["decode"][drafter]
    assert merged[2] == pytest.approx(50.0, rel=0.01) and merged[0] / merged[1] == pytest.approx(50.0)
    forgetting = _run(cache, "--no-speed-memory")
    assert "start_speed" not in forgetting
    assert forgetting["stats"]["setting_changes"][0]["members"] == first["stats"]["setting_changes"][0]["members"]
    # a cache that cannot be written costs the next run its evidence, not this run its output
    entry.unlink()
    (cache / "speeds").rmdir()
    (cache / "speeds").write_text("a file where the folder should be")
    unwritable = _run(cache)
    assert unwritable["tokens"] == first["tokens"]
