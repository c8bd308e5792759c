"""polyplan.bench: side-by-side benchmarks of a plan against autoregressive decoding and
transformers assisted generation (the torch side lives in polyplan.bench.runner)."""
