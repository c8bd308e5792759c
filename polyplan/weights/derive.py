"""Derived copies of a model: lower precision (a dtype at load time) and weight quantization.

Quantization uses torchao (``quantize_``), the current PyTorch quantization library; torch's
old eager ``torch.ao.quantization`` API is deprecated. Measured on this 2-core CPU with
torchao 0.18 / torch 2.13 (SmolLM2-135M, context 92, one new token):

==========================  =============  ==========================
derivation                  1-token time   argmax agreement with fp32
==========================  =============  ==========================
none, float32                ~85 ms         1.00
none, bfloat16               ~60 ms         0.98
int8 (Int8WeightOnly)        ~175 ms        0.98
int8-dynamic (W8A8)          ~170 ms        0.91
==========================  =============  ==========================

On CPU the int8 kernels are SLOWER than float32 (no fused int8 GEMM path for these shapes): the
int8 copy is the paper's "quantized target" in accuracy terms, and the profiler measures its
real cost, so the planner only picks it where it pays. On CUDA the same configs use fast kernels.
"""

from __future__ import annotations

import logging

import torch

from polyplan.errors import UserError

DERIVATIONS = {
    "none": "the checkpoint as stored, cast to the member's dtype",
    "int8": "torchao int8 weight-only quantization of every Linear layer",
    "int8-dynamic": "torchao int8 weights + dynamic int8 activations (W8A8) on every Linear layer",
}


def check_derivation(name: str) -> str:
    if name not in DERIVATIONS:
        hint = (
            ' (gguf:TYPE quantizations are run by llama.cpp: add backend = "llama.cpp")'
            if isinstance(name, str) and name.lower().startswith("gguf:")
            else ""
        )
        raise UserError(f"unknown derivation {name!r}: use one of {', '.join(DERIVATIONS)}{hint}")
    return name


def _torchao_quantization():
    # torchao logs a warning per optional CUDA extension it cannot load on a CPU-only machine
    logging.getLogger("torchao").setLevel(logging.ERROR)
    try:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except ImportError as e:
        raise UserError(f"int8 derivations need torchao (pip install torchao): {e}") from None
    return quantize_, Int8WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig


def apply_derivation(model: torch.nn.Module, derivation: str) -> torch.nn.Module:
    """Quantize ``model`` in place per ``derivation`` (``none`` leaves it alone)."""
    check_derivation(derivation)
    if derivation == "none":
        return model
    quantize_, weight_only, dynamic = _torchao_quantization()
    config = weight_only() if derivation == "int8" else dynamic()
    with torch.no_grad():
        quantize_(model, config)
    return model
