"""What an upper layer lends the layers below it, so that they call up without importing up.

``plan_chain(path, pool)``: what ``polyplan.Chain.from_plan`` returns, the chain ``polyplan run
PLAN`` runs. The executor knows only drafters and controllers; plans, pools and policies are
joined above it (``polyplan.assemble``), and the package root sets this when it is imported --
always before the executor, which lives inside it. This module imports nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

plan_chain: Callable[[Any, Any], Any] | None = None
