"""What a level hands up with its block: how the level above is to test those tokens.

The block's tokens are on the working sequence ``W`` (a tree's are not, until verified); a
:class:`Draft` says how they were drawn: from distributions ``q`` (sampling), as a model-free
drafter's proposals (q one-hot at each, never built), as a tree, or greedily (nothing to carry)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from polyplan.executor.sampling import POINT_MASS, PointMass
from polyplan.executor.tree import DraftTree


class Draft(NamedTuple):
    #: [m, V] the drafting level's processed distributions at the block's m tokens; None when greedy
    q: torch.Tensor | None = None
    #: the tokens are a model-free drafter's proposals: q is one-hot at each (``POINT_MASS``)
    point_mass: bool = False
    #: a draft tree, its tokens not on ``W`` until verified (``q`` and ``point_mass`` unused)
    tree: DraftTree | None = None

    def q_on(self, device: torch.device, m: int) -> torch.Tensor | PointMass | None:
        """The drafts' q as the sampled acceptance test takes it, on the verifier's ``device``."""
        if self.point_mass:
            return POINT_MASS
        if self.q is not None and m:
            return self.q.to(device, non_blocking=True)
        return self.q


#: a greedy block (or the target alone's empty one): the tokens are all the verifier needs
GREEDY = Draft()
