"""A run's identity and whether an existing profile may be resumed: the settings document it
records, the prompts it measures (checked before anything is measured) and the checks that refuse
a profile measured differently."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from polyplan.data import Prompt
from polyplan.data.prompt_file import PromptSet, check_prompt_fits, prompt_set
from polyplan.documents.profile import Profile
from polyplan.errors import UserError
from polyplan.profiler.machine import machine_fingerprint
from polyplan.profiler.settings import ProfileInputs, ProfileSettings

# settings that may differ between a run and the run that resumes it
_VOLATILE_SETTINGS = ("budget_s", "elapsed_s", "phase_s")


def settings_doc(settings: ProfileSettings, inputs: ProfileInputs, workload: dict | None) -> dict[str, Any]:
    doc = asdict(settings)
    # the file is known by its content (workload), not by a path that differs between shells
    doc.pop("prompts_file")
    doc["members"] = [d.name for d in inputs.drafters]
    doc["workload"] = workload
    return doc


def checked_prompts(
    settings: ProfileSettings, inputs: ProfileInputs
) -> tuple[PromptSet, list[Prompt], dict[str, list[int]]]:
    """The prompts to measure, each encoded and checked to leave the target room to answer,
    before anything is measured (a bad prompt file fails before minutes of latency runs)."""
    source = prompt_set(settings.prompts_file)
    if settings.random_weights:
        return source, [], {}
    prompts = source.select(settings.categories, settings.prompts)
    models = [d for d in inputs.drafters if not d.point_mass and d.max_context is not None]
    encoded = {}
    for prompt in prompts:
        ids = inputs.encode(prompt.text)
        for d in models:
            check_prompt_fits(prompt, len(ids), d.max_context, 1, d.name)
        encoded[prompt.id] = ids
    return source, prompts, encoded


def check_resumable(prev: Profile, inputs: ProfileInputs, settings_doc: dict, fingerprint: dict) -> None:
    problems = []
    if prev.pool != inputs.pool or prev.target != inputs.target:
        problems.append(f"pool/target {prev.pool}/{prev.target} vs {inputs.pool}/{inputs.target}")
    old = {k: v for k, v in prev.settings.items() if k not in _VOLATILE_SETTINGS}
    new = {k: v for k, v in settings_doc.items() if k not in _VOLATILE_SETTINGS}
    if "workload" not in old and (new.get("workload") or {}).get("name") in (None, "built-in"):
        old["workload"] = new.get("workload")  # profiles from before workloads were recorded: built-in set
    if old.get("top_k") == 0:
        old["top_k"] = None  # profiles from before None meant "off" recorded top-k 0 ...
    if old.get("top_p") == 1.0:
        old["top_p"] = None  # ... and top-p 1
    if "screen" not in old:
        old["screen"] = new.get("screen")  # profiles from before screening measured every member
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            then, now = (_short(k, side.get(k)) for side in (old, new))
            problems.append(f"{k}: {then} then, {now} now")
    old_fp = machine_fingerprint(prev.machine)
    if old_fp != fingerprint:
        diff = [k for k in fingerprint if old_fp.get(k) != fingerprint.get(k)]
        problems.append("machine differs (" + ", ".join(diff) + ")")
    if [asdict(c) for c in prev.candidates] != [asdict(c) for c in inputs.candidates]:
        problems.append("candidates differ (dtype, device, derivation or weights)")
    if problems:
        raise UserError(
            "the existing profile was measured differently, so it cannot be resumed: "
            + "; ".join(problems)
            + ". Use --force to measure from scratch (overwrites it) or choose another -o"
        )


def _short(key: str, value: Any) -> str:
    if key == "workload" and isinstance(value, dict):
        return f"{value.get('count')} prompts of {value.get('name')} (sha256 {str(value.get('sha256'))[:12]})"
    return repr(value)
