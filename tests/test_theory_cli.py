"""`polyplan theory ...`: the predict JSON contract, tables, and one-line errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from polyplan.cli import root
from polyplan.errors import UserError

runner = CliRunner()


def _run(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from polyplan.cli import main; sys.argv = ['polyplan'] + sys.argv[1:]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_predict_json_contract():
    result = runner.invoke(
        root, ["theory", "predict", "--alpha", "0.9,0.6", "--gamma", "6,3", "--latency", "1.0,0.3,0.02", "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["time_per_token"] == pytest.approx(0.3806260466793472, rel=1e-12)
    assert out["speedup"] == pytest.approx(1.0 / out["time_per_token"])
    assert out["mean_acceptance_length"] == pytest.approx(5.636289, rel=1e-6)
    assert len(out["tokens_per_pass"]) == 3 and out["tokens_per_pass"][0] == out["mean_acceptance_length"]
    # time per token = sum_i T_i / L_i (accounting theorem)
    assert out["time_per_token"] == pytest.approx(
        sum(t / n for t, n in zip([1.0, 0.3, 0.02], out["tokens_per_pass"], strict=True))
    )


def test_predict_single_model_and_exact():
    out = json.loads(runner.invoke(root, ["theory", "predict", "--latency", "0.5", "--json"]).stdout)
    assert out["speedup"] == 1.0 and out["tokens_per_pass"] == [1.0] and out["time_per_token"] == 0.5
    exact = json.loads(
        runner.invoke(
            root, ["theory", "predict", "--alpha", "0.8", "--gamma", "4", "--latency", "1,0.1", "--exact", "--json"]
        ).stdout
    )
    assert exact["exact"]["time_per_token"] == "875/2101"


def test_predict_table():
    result = runner.invoke(root, ["theory", "predict", "--alpha", "0.8", "--gamma", "4", "--latency", "1,0.1"])
    assert result.exit_code == 0
    assert "2.40114" in result.stdout and "3.3616" in result.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--alpha", "0.9", "--gamma", "6,3", "--latency", "1,0.3,0.02"], "acceptance rates"),
        (["--alpha", "0.9,1.0", "--gamma", "6,3", "--latency", "1,0.3,0.02"], "[0, 1)"),
        (["--alpha", "0.9,-0.1", "--gamma", "6,3", "--latency", "1,0.3,0.02"], "[0, 1)"),
        (["--alpha", "0.9,0.6", "--gamma", "6,0", "--latency", "1,0.3,0.02"], "gamma_3"),
        (["--alpha", "0.9,0.6", "--gamma", "6,2.5", "--latency", "1,0.3,0.02"], "whole numbers"),
        (["--alpha", "0.9,0.6", "--gamma", "6,3", "--latency", "1,-0.3,0.02"], "latency of M2"),
        (["--alpha", "0.9,0.6", "--gamma", "6,3", "--latency", "1,0.3"], "acceptance rates"),
        (["--alpha", "abc", "--gamma", "6", "--latency", "1,0.3"], "not a number"),
    ],
)
def test_bad_input_is_a_one_line_user_error(args, needle):
    result = runner.invoke(root, ["theory", "predict", *args, "--json"])
    assert isinstance(result.exception, UserError), result.output
    message = str(result.exception)
    assert needle in message and "\n" not in message and result.stdout == ""


def test_bad_input_through_the_console_entry_point():
    """main() turns the UserError into one stderr line and a non-zero exit, no traceback."""
    result = _run("theory", "predict", "--alpha", "0.9,1.0", "--gamma", "6,3", "--latency", "1,0.3,0.02", "--json")
    assert result.returncode != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "alpha_2 must lie in [0, 1)" in lines[0] and "Traceback" not in result.stderr


def test_show_pretty_latex_and_unknown():
    pretty = runner.invoke(root, ["theory", "show"])
    assert pretty.exit_code == 0 and "proofs/chain-model.md" in pretty.stdout
    latex = runner.invoke(root, ["theory", "show", "optimal-gamma", "--latex"])
    assert "W_{-1}" in latex.stdout
    unknown = _run("theory", "show", "nonsense")
    assert unknown.returncode != 0 and "no theorem named" in unknown.stderr and "Traceback" not in unknown.stderr


def test_insert_json_and_errors():
    result = runner.invoke(
        root,
        [
            "theory",
            "insert",
            "--alpha",
            "0.6",
            "--gamma",
            "4",
            "--latency",
            "1,0.02",
            "--position",
            "2",
            "--new-alpha-above",
            "0.85",
            "--new-alpha-below",
            "0.7",
            "--new-latency",
            "0.2",
            "--new-gamma",
            "4",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["improves"] is True and out["change"] < 0 and out["gamma_after"] == [4, 4]
    bad = _run(
        "theory",
        "insert",
        "--alpha",
        "0.6",
        "--gamma",
        "4",
        "--latency",
        "1,0.02",
        "--position",
        "2",
        "--new-alpha-above",
        "0.85",
        "--new-latency",
        "0.2",
        "--new-gamma",
        "4",
    )
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_gammas_and_simulate():
    out = json.loads(runner.invoke(root, ["theory", "gammas", "--alpha", "0.8", "--latency", "1,0.1", "--json"]).stdout)
    assert out["gamma"] == [6] and out["continuous_gamma_two_level"] == pytest.approx(5.7562, abs=1e-3)
    sim = json.loads(
        runner.invoke(
            root,
            [
                "theory",
                "simulate",
                "--alpha",
                "0.8",
                "--gamma",
                "4",
                "--latency",
                "1,0.1",
                "--tokens",
                "5000",
                "--json",
            ],
        ).stdout
    )
    assert abs(sim["time_per_token"] - sim["predicted_time_per_token"]) < 5 * sim["time_per_token_stderr"]
