"""polyplan.profiler: latency curves T_i(n, c) and teacher-forced acceptance into a profile.

Public API::

    run_profile(inputs, output, settings, budget_s=None, force=False, progress=None) -> ProfileOutcome
    ProfileInputs, ProfileSettings, ProgressHooks, inputs_from_pool(pool, members=None, ...)
    measure_context(...)               latency of several drafters at one context length
    score_reference(...), teacher_force(...), greedy_reference(...), processed_probs(...)
    latency_table / latency_grid / acceptance_matrix / acceptance_by_category (pandas views)
    load_traces(profile_path)          the .npz sidecar as a dict of arrays
"""

from polyplan.profiler.acceptance import (
    greedy_reference,
    point_mass_proposals,
    processed_probs,
    score_reference,
    teacher_force,
)
from polyplan.profiler.latency import measure_context
from polyplan.profiler.machine import machine_facts
from polyplan.profiler.session import (
    ProfileInputs,
    ProfileOutcome,
    ProfileSettings,
    ProgressHooks,
    load_traces,
    new_token_grid,
    run_profile,
    sidecar_path,
)
from polyplan.profiler.views import acceptance_by_category, acceptance_matrix, latency_grid, latency_table

__all__ = [
    "ProfileInputs",
    "ProfileOutcome",
    "ProfileSettings",
    "ProgressHooks",
    "acceptance_by_category",
    "acceptance_matrix",
    "greedy_reference",
    "latency_grid",
    "latency_table",
    "load_traces",
    "machine_facts",
    "measure_context",
    "new_token_grid",
    "point_mass_proposals",
    "processed_probs",
    "run_profile",
    "score_reference",
    "sidecar_path",
    "teacher_force",
]
