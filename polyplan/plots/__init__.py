"""polyplan.plots — matplotlib figures of the theory, a profile, a plan and bench results.

Pure Python + numpy + matplotlib (no torch, no pyplot): every function returns a
``matplotlib.figure.Figure`` on the Agg canvas; ``save_figure`` writes it as PNG. The notebooks
show the same figures and ``polyplan plot`` writes them.

Theory (no input): ``speedup_surfaces``, ``insertion_region``, ``acceptance_stability``,
``model_vs_simulation``. Profile: ``latency_curves``, ``acceptance_heatmap``. Plan:
``pareto_front`` (with ``options_from_plan`` / ``options_from_estimates``), ``plan_breakdown``.
Bench: ``predicted_vs_measured``, ``speedups``, ``levels_measured_vs_predicted`` (with the plan).
Each figure's numbers come from a data function beside it (``two_level_speedup_grid``,
``insertion_grid``, ``acceptance_matrix``, ``pareto_options``, ``level_breakdown``,
``prediction_points``, ...)."""

from polyplan.plots.bench import (
    LevelComparison,
    PredictionPoint,
    level_comparisons,
    levels_measured_vs_predicted,
    predicted_vs_measured,
    prediction_points,
    speedups,
)
from polyplan.plots.canvas import DEFAULT_DPI, new_figure, save_figure
from polyplan.plots.plan import (
    PlanOption,
    chain_breakdown,
    level_breakdown,
    options_from_estimates,
    options_from_plan,
    pareto_front,
    pareto_options,
    plan_breakdown,
)
from polyplan.plots.profile import acceptance_heatmap, acceptance_matrix, category_matrix, latency_curves
from polyplan.plots.theory import (
    InsertionGrid,
    ModelCheck,
    acceptance_cv,
    acceptance_stability,
    insertion_grid,
    insertion_region,
    model_vs_simulation,
    model_vs_simulation_data,
    random_distribution_pairs,
    speedup_surfaces,
    three_level_speedup_grid,
    two_level_speedup_grid,
)

__all__ = [
    "DEFAULT_DPI",
    "InsertionGrid",
    "LevelComparison",
    "ModelCheck",
    "PlanOption",
    "PredictionPoint",
    "acceptance_cv",
    "acceptance_heatmap",
    "acceptance_matrix",
    "acceptance_stability",
    "category_matrix",
    "chain_breakdown",
    "insertion_grid",
    "insertion_region",
    "latency_curves",
    "level_breakdown",
    "level_comparisons",
    "levels_measured_vs_predicted",
    "model_vs_simulation",
    "model_vs_simulation_data",
    "new_figure",
    "options_from_estimates",
    "options_from_plan",
    "pareto_front",
    "pareto_options",
    "plan_breakdown",
    "predicted_vs_measured",
    "prediction_points",
    "random_distribution_pairs",
    "save_figure",
    "speedup_surfaces",
    "speedups",
    "three_level_speedup_grid",
    "two_level_speedup_grid",
]
