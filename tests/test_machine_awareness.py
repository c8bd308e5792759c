"""A plan profiled on another CPU or GPU model: `run` and `bench` say so in one line, before loading."""

from __future__ import annotations

import subprocess
import sys

import pytest

from polyplan.documents.plan import Plan
from polyplan.profiler.machine import cpu_model, other_machine_warning

HERE = {"cpu": "Intel(R) Xeon(R) Here 1234", "gpu": None}


def test_same_machine_or_unknown_machine_is_quiet():
    assert other_machine_warning({"pool": "p", "machine": dict(HERE, device="cpu")}, "plan.json", HERE) is None
    assert other_machine_warning({"pool": "p"}, "plan.json", HERE) is None  # a plan that does not say
    # this machine's own facts, looked up for real
    assert other_machine_warning({"pool": "p", "machine": {"cpu": cpu_model(), "device": "cpu"}}, "plan.json") is None


def test_other_cpu_is_one_line_naming_both_and_how_to_reprofile():
    profile = {"pool": "smollm2", "machine": {"cpu": "AMD EPYC Elsewhere 7777", "device": "cpu", "gpu": None}}
    w = other_machine_warning(profile, "out/plan.json", HERE)
    assert w is not None and "\n" not in w
    assert "AMD EPYC Elsewhere 7777" in w and "Intel(R) Xeon(R) Here 1234" in w
    assert "polyplan profile --pool smollm2 -o smollm2-this-machine.profile.json" in w
    assert "polyplan optimize smollm2-this-machine.profile.json -o out/plan.json" in w


def test_other_gpu_model_is_noticed_on_the_same_cpu():
    profile = {"pool": "q", "machine": {"cpu": HERE["cpu"], "device": "cuda", "gpu": "NVIDIA H200"}}
    w = other_machine_warning(profile, "plan.json", {"cpu": HERE["cpu"], "gpu": "NVIDIA A10"})
    assert w and "NVIDIA H200" in w and "NVIDIA A10" in w
    assert other_machine_warning(profile, "plan.json", {"cpu": HERE["cpu"], "gpu": "NVIDIA H200"}) is None
    assert "this machine is " + HERE["cpu"] + ":" in other_machine_warning(profile, "plan.json", HERE)


def test_same_cpu_name_with_other_matmul_features_is_noticed():
    """Two machines sold as "AMD EPYC": one with AVX-512 bf16, one without (bf16 costs differ)."""
    zen4 = {"family": "25", "model": "17", "flags": ["avx2", "fma", "avx512f", "avx512_bf16"]}
    zen3 = {"family": "25", "model": "1", "flags": ["avx2", "fma"]}
    profile = {"pool": "p", "machine": {"cpu": "AMD EPYC", "cpu_features": zen3, "device": "cpu"}}
    w = other_machine_warning(profile, "plan.json", {"cpu": "AMD EPYC", "cpu_features": zen4, "gpu": None})
    assert w and "\n" not in w and "family 25 model 1: avx2 fma)" in w and "avx512_bf16" in w
    assert other_machine_warning(profile, "plan.json", {"cpu": "AMD EPYC", "cpu_features": zen3, "gpu": None}) is None
    # profiles written before features were recorded stay quiet on a same-name CPU
    old = {"pool": "p", "machine": {"cpu": "AMD EPYC", "device": "cpu"}}
    assert other_machine_warning(old, "plan.json", {"cpu": "AMD EPYC", "cpu_features": zen4, "gpu": None}) is None


def _plan(tmp_path, chain: list[str], cpu: str):
    plan = Plan(
        chain=[{"name": n} for n in chain],
        gammas=[2] * (len(chain) - 1),
        prediction={"time_per_token_s": 0.01, "tokens_per_pass": [1.5] * len(chain)},
        profile={"pool": "smollm2", "machine": {"cpu": cpu, "device": "cpu", "gpu": None}},
    )
    path = tmp_path / "plan.json"
    plan.save(path)
    return path


def polyplan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polyplan.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from test_executor_cli import WORDS, save_model_dir
    from tiny_models import perturbed_copy, tiny_llama

    root = tmp_path_factory.mktemp("models")
    target = tiny_llama(vocab_size=len(WORDS), num_layers=1, seed=1, logit_scale=3.0)
    return save_model_dir(target, root / "target"), save_model_dir(perturbed_copy(target, 0.01, seed=2), root / "draft")


def test_run_warns_once_for_a_plan_from_another_cpu(model_dirs, tmp_path):
    chain = [str(d) for d in model_dirs]
    out = polyplan("run", str(_plan(tmp_path, chain, "Imaginary CPU 9000")), "w3 w4", "--max-new-tokens", "4")
    assert out.returncode == 0, out.stderr
    warnings = [ln for ln in out.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "Imaginary CPU 9000" in warnings[0] and cpu_model() in warnings[0]
    quiet = polyplan("run", str(_plan(tmp_path, chain, cpu_model())), "w3 w4", "--max-new-tokens", "4")
    assert quiet.returncode == 0 and "warning:" not in quiet.stderr


def test_bench_warns_before_loading_any_model(tmp_path):
    # the pool does not exist: the warning must already be out when loading fails
    plan = _plan(tmp_path, ["nowhere-target", "nowhere-draft"], "Imaginary CPU 9000")
    doc = plan.read_text().replace('"pool": "smollm2"', '"pool": "no-such-pool"')
    plan.write_text(doc)
    out = polyplan("bench", str(plan), "-o", str(tmp_path / "b.json"))
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert lines[0].startswith("warning:") and "Imaginary CPU 9000" in lines[0]
    assert "no-such-pool" in lines[-1] and len(lines) == 2


def test_usable_cores_follow_the_affinity_and_a_cgroup_quota(tmp_path, monkeypatch):
    """llama.cpp and torch threads default to the cores this process may use: its CPU affinity,
    capped by a container's CPU quota (which os.cpu_count() does not see)."""
    import os

    from polyplan import cpu

    affinity = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    monkeypatch.setattr(cpu, "CGROUP_CPU_MAX", str(quota))
    assert cpu.usable_cores() == affinity  # no quota file
    quota.write_text("max 100000\n")
    assert cpu.usable_cores() == affinity
    quota.write_text("50000 100000\n")  # half a core: still one thread
    assert cpu.usable_cores() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    quota.write_text("250000 100000\n")  # 2.5 cores of 8: three threads
    assert cpu.usable_cores() == 3


def test_plans_name_cached_ggufs_relative_to_the_cache(tmp_path, monkeypatch):
    """A GGUF in the polyplan cache is recorded relative to it (shell syntax), so a plan made on
    one machine names the same entry on another; a file elsewhere keeps its absolute path."""
    import subprocess

    from polyplan.profiler.pool_inputs import portable_gguf_path

    monkeypatch.setenv("POLYPLAN_CACHE", str(tmp_path / "cache"))
    entry = tmp_path / "cache" / "gguf-derived" / "abc-q4_0" / "model-q4_0.gguf"
    recorded = portable_gguf_path(entry)
    assert recorded == "${POLYPLAN_CACHE:-$HOME/.cache/polyplan}/gguf-derived/abc-q4_0/model-q4_0.gguf"
    shell = subprocess.run(["sh", "-c", f'echo "{recorded}"'], capture_output=True, text=True, check=True)
    assert shell.stdout.strip() == str(entry)
    assert portable_gguf_path(tmp_path / "mine.gguf") == str((tmp_path / "mine.gguf").resolve())
    assert portable_gguf_path(None) == ""
