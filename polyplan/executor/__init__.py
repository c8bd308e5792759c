"""polyplan.executor: the staged speculative-decoding loop over a chain of drafters.

from polyplan.executor import Chain
result = Chain([target, middle, bottom], gammas=[6, 3]).generate(ids, max_new_tokens=128)
"""

from polyplan.executor.front import Chain
from polyplan.executor.request import GenerationResult
from polyplan.executor.sampling import SamplingParams
from polyplan.executor.stats import GenerationStats, LevelStats

__all__ = ["Chain", "GenerationResult", "GenerationStats", "LevelStats", "SamplingParams"]
