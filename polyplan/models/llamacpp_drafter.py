"""``LlamaCppDrafter``: a GGUF model run by llama.cpp (through llama-cpp-python) as a chain member.

It implements the Drafter interface of docs/staged-decoding.md with llama.cpp's own decode
loop instead of ``Llama.eval``: ``eval`` copies the logits of EVERY fed position into an
``n_ctx x vocab`` float32 array when ``logits_all`` is on (2.5 GB for Qwen at n_ctx 4096), and
none at all when it is off. Here the batch asks llama.cpp for logits only at the rows ``score``
returns (``last``), so the LM head runs only there, and those rows are copied once, straight
into the torch tensor handed back. Greedy drafting (``score_argmax``) asks for the last row only
and takes its argmax in place on llama.cpp's buffer, copying no row. One ``llama_batch``, made at
load, serves every pass through numpy views over its arrays (no per-pass loop of ctypes stores).

State: one sequence (seq id 0) in llama.cpp's KV cache. ``rollback`` removes the cache cells
at positions >= length (``llama_memory_seq_rm``); the next batch is placed at position
``length``. Logits are float32 on the CPU; llama.cpp computes them from the GGUF's quantized
weights as they are (Q4_1, Q4_K_M, ...), which is the point: a 4-bit copy at a fraction of the
float target's cost.
"""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from polyplan.cpu import usable_cores
from polyplan.errors import UserError
from polyplan.models.drafter import Drafter
from polyplan.models.llamacpp_runtime import GGUFLoadError, check_runs, import_llama_cpp

DEFAULT_N_CTX = 4096
#: every core this process may use: chain levels run one after another, never together
DEFAULT_THREADS = usable_cores()
#: a pool's llama.cpp TARGET scores at least this many tokens per pass by default (see min_pass)
DEFAULT_TARGET_MIN_PASS = 2
_N_BATCH = 512


class LlamaContextFull(UserError):
    """The sequence would overflow the llama.cpp context (n_ctx)."""


def _checked_gguf(gguf: str | Path, name: str, *, n_ctx: int, threads: int, min_pass: int) -> Path:
    """The GGUF path, once it exists and the options are positive."""
    path = Path(gguf)
    if not path.is_file():
        raise GGUFLoadError(f"{name}: GGUF file {path} does not exist")
    if n_ctx < 1 or threads < 1 or min_pass < 1:
        raise UserError(
            f"{name}: n_ctx, threads and min_pass must be positive "
            f"(got n_ctx={n_ctx}, threads={threads}, min_pass={min_pass})"
        )
    return path


def _open_llama(
    lc: ModuleType, path: Path, name: str, *, n_ctx: int, n_batch: int, threads: int, flash_attn: bool
) -> Any:
    """llama.cpp's ``Llama`` on ``path``; a load it refuses is one GGUFLoadError line."""
    try:
        return lc.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_ubatch=n_batch,
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=flash_attn,
            logits_all=False,
            verbose=False,
        )
    except (ValueError, RuntimeError, OSError) as e:
        raise GGUFLoadError(f"{name}: llama.cpp cannot load {path} ({str(e).splitlines()[0][:160]})") from None


def _refuse_unrollable(lc: ModuleType, llama: Any, name: str, path: Path) -> None:
    """A recurrent or hybrid model (closed, then refused): its state cannot be rolled back."""
    for check, kind in (("llama_model_is_recurrent", "recurrent"), ("llama_model_is_hybrid", "hybrid")):
        test = getattr(lc, check, None)
        if test is not None and test(llama.model):
            llama.close()
            raise GGUFLoadError(
                f"{name}: {path.name} is a {kind} model: its state cannot be cut back to an earlier "
                "position after a rejected draft, so it cannot sit in a chain"
            )


class LlamaCppDrafter(Drafter):
    """A GGUF model in llama.cpp, batch size 1, behind the :class:`Drafter` interface."""

    point_mass = False
    device = torch.device("cpu")

    def __init__(
        self,
        gguf: str | Path,
        name: str,
        *,
        n_ctx: int = DEFAULT_N_CTX,
        threads: int = DEFAULT_THREADS,
        tokenizer: Any = None,
        probe: bool = True,
        min_pass: int = 1,
        flash_attn: bool = False,
    ) -> None:
        path = _checked_gguf(gguf, name, n_ctx=n_ctx, threads=threads, min_pass=min_pass)
        lc = import_llama_cpp()
        if probe:
            check_runs(path)
        n_batch = min(_N_BATCH, n_ctx)
        self._llama = _open_llama(lc, path, name, n_ctx=n_ctx, n_batch=n_batch, threads=threads, flash_attn=flash_attn)
        _refuse_unrollable(lc, self._llama, name, path)
        self._lc = lc
        self.name = name
        self.tokenizer = tokenizer
        self.gguf_path = path
        self.threads = threads
        #: llama.cpp's fused attention kernel: prefill of long prompts 26-30% faster on the 2-core
        #: EPYC (2048 tokens: Q8_0 7.3 -> 5.4 s, Q4_0 6.2 -> 4.3 s), one-token passes after them
        #: 4-12% slower; pools turn it on for drafters (see pool_spec.LLAMACPP_FLASH_ATTN)
        self.flash_attn = flash_attn
        self._ctx = self._llama.ctx
        self._mem = lc.llama_get_memory(self._ctx)
        self._read_model_facts(n_ctx)
        self._n_batch = n_batch
        self._batch = lc.llama_batch_init(n_batch, 0, 1)
        self._free_batch = weakref.finalize(self, lc.llama_batch_free, self._batch)
        self._bind_batch(n_batch)
        self._eos_ids = self._end_of_generation_ids()
        #: llama.cpp picks kernels by the number of tokens in a pass, and their logits differ: a
        #: one-token pass differs from a longer one (by up to ~1.1 on SmolLM2 Q4_1), and for Qwen
        #: Q4_K_M passes of 2-3, 4-5 and 8+ tokens form three groups (up to 0.34 apart; measured,
        #: docs/staged-decoding.md "Numerics"). A TARGET whose output must not depend on how many
        #: drafts a round verified scores at least ``min_pass`` tokens per pass, re-feeding the
        #: tokens before the new ones: 2 makes SmolLM2 Q4_1 batch-invariant, Qwen Q4_K_M needs 8.
        self.min_pass = min_pass
        self._tokens: list[int] = []
        self._processed = 0

    def _read_model_facts(self, n_ctx: int) -> None:
        """The vocabulary, context and size of the loaded model, and its description."""
        lc, model = self._lc, self._llama.model
        self._vocab = lc.llama_model_get_vocab(model)
        self.vocab_size = int(lc.llama_vocab_n_tokens(self._vocab))
        self.n_ctx_train = int(lc.llama_model_n_ctx_train(model))
        self._max_context = min(n_ctx, self.n_ctx_train) if self.n_ctx_train > 0 else n_ctx
        self.param_count = int(lc.llama_model_n_params(model))
        buf = ctypes.create_string_buffer(256)
        lc.llama_model_desc(model, buf, len(buf))
        #: e.g. "llama ?B Q4_1 - Medium": architecture, size and the GGUF's quantization
        self.description = buf.value.decode("utf-8", "replace")
        self.dtype = self.description.split(" ", 2)[-1] if self.description.count(" ") >= 2 else "gguf"

    def _bind_batch(self, n_batch: int) -> None:
        """numpy views over the batch's arrays, made once: a pass then fills them with a few slice
        assignments instead of a Python loop of ctypes stores. Every token belongs to sequence 0
        alone, so ``n_seq_id`` and ``seq_id`` are written here once (llama_decode only reads the
        batch)."""
        batch = self._batch
        self._batch_token = np.ctypeslib.as_array(batch.token, shape=(n_batch,))
        self._batch_pos = np.ctypeslib.as_array(batch.pos, shape=(n_batch,))
        self._batch_wanted = np.ctypeslib.as_array(batch.logits, shape=(n_batch,))
        np.ctypeslib.as_array(batch.n_seq_id, shape=(n_batch,))[:] = 1
        for i in range(n_batch):
            batch.seq_id[i][0] = 0
        self._offsets = np.arange(n_batch, dtype=self._batch_pos.dtype)
        self._row_bytes = self.vocab_size * ctypes.sizeof(ctypes.c_float)

    def _end_of_generation_ids(self) -> list[int]:
        """Every token llama.cpp itself stops a generation on (EOS, EOT, ...: ``is_eog``),
        plus the HF tokenizer's EOS when one was given."""
        lc, vocab = self._lc, self._vocab
        ids = {i for i in range(self.vocab_size) if lc.llama_vocab_is_eog(vocab, i)}
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        return sorted(ids)

    # -- Drafter interface -------------------------------------------------------------------

    @property
    def eos_token_ids(self) -> list[int]:
        return list(self._eos_ids)

    def reset(self) -> None:
        self._lc.llama_memory_clear(self._mem, True)
        self._tokens.clear()
        self._processed = 0

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self._processed:
            raise ValueError(f"{self.name}: cannot roll back to {length} of {self._processed} processed tokens")
        if length == self._processed:
            return
        if not self._lc.llama_memory_seq_rm(self._mem, 0, length, -1):
            raise RuntimeError(f"{self.name}: llama.cpp refused to drop KV cells from position {length}")
        del self._tokens[length:]
        self._processed = length

    def score(self, new_ids: torch.Tensor, last: int | None = None) -> torch.Tensor:
        """As :meth:`Drafter.score`. With ``last``, llama.cpp computes logits only for the last
        ``last`` positions. Batches longer than 512 tokens are decoded in balanced pieces of at most
        512 (never a short tail piece: every piece of a padded target stays >= ``min_pass``)."""
        ids = new_ids.tolist()
        n = len(ids)
        keep = n if last is None else max(0, min(int(last), n))
        self._check_room(n)
        if 0 < n < self.min_pass:
            return self._score_padded(ids, keep)
        out = torch.empty((keep, self.vocab_size), dtype=torch.float32)
        row = 0
        for outputs in self._decode(ids, n - keep):
            if outputs:
                # one copy, from llama.cpp's output buffer (reused by the next decode) into ours:
                # its rows are contiguous and in batch order, as ``out``'s are
                dst = out.data_ptr() + row * self._row_bytes
                ctypes.memmove(dst, self._lc.llama_get_logits(self._ctx), outputs * self._row_bytes)
                row += outputs
        return out

    def score_argmax(self, new_ids: torch.Tensor) -> torch.Tensor:
        """As :meth:`Drafter.score_argmax`: llama.cpp computes the last row only and its argmax
        is taken in place, on a numpy view of llama.cpp's output buffer (no copy of the row).
        ``np.argmax`` and ``torch.argmax`` both return the first of tied maxima: the same token."""
        n = int(new_ids.shape[0])
        if n == 0 or n < self.min_pass:
            return super().score_argmax(new_ids)  # padding (a target's regime) goes through score
        return torch.tensor([int(self._last_row(new_ids).argmax())], dtype=torch.long)

    def score_argmax_gap(self, new_ids: torch.Tensor) -> tuple[torch.Tensor, float]:
        """As :meth:`Drafter.score_argmax_gap`, on llama.cpp's buffer in place: the second
        largest logit is the row's maximum with the first masked for a moment (no copy, no sort)."""
        n = int(new_ids.shape[0])
        if n == 0 or n < self.min_pass:
            return super().score_argmax_gap(new_ids)
        row = self._last_row(new_ids)
        i = int(row.argmax())
        top = float(row[i])
        row[i] = -np.inf  # llama.cpp's output buffer: rewritten by the next decode, restored anyway
        second = float(row.max())
        row[i] = top
        return torch.tensor([i], dtype=torch.long), top - second

    def _last_row(self, new_ids: torch.Tensor) -> np.ndarray:
        """Decode ``new_ids`` (at least ``min_pass``) asking for the last row's logits only, and
        return that row as a numpy view of llama.cpp's output buffer (valid until the next decode)."""
        ids = new_ids.tolist()
        self._check_room(len(ids))
        for _ in self._decode(ids, len(ids) - 1):
            pass
        return np.ctypeslib.as_array(self._lc.llama_get_logits_ith(self._ctx, -1), shape=(self.vocab_size,))

    def _check_room(self, n: int) -> None:
        """Refuse a pass that would overflow the context, before any padding rollback, so a
        refused step leaves the state as it was."""
        if self._processed + n > self._max_context:
            raise LlamaContextFull(
                f"{self.name} holds at most {self._max_context} tokens (n_ctx); this step would need "
                f"{self._processed + n}: shorten the prompt, lower --max-new-tokens or raise the member's n_ctx"
            )

    def _score_padded(self, ids: list[int], keep: int) -> torch.Tensor:
        """A pass of 0 < n < ``min_pass`` tokens, scored as ``min_pass`` tokens (see ``min_pass``)."""
        n = len(ids)
        if self._processed == 0:
            # a first pass (a prompt) shorter than min_pass: padded AFTER its tokens (causal, no
            # real row sees the padding), which is then dropped, so it too stays in the regime
            pad = self.min_pass - n
            out = self.score(torch.tensor(ids + ids[-1:] * pad), last=keep + pad)
            self.rollback(n)
            return out[:keep]
        k = min(self.min_pass - n, self._processed)
        previous = self._tokens[-k:]
        self.rollback(self._processed - k)
        return self.score(torch.tensor(previous + ids), last=keep)

    def _decode(self, ids: list[int], first_out: int) -> Iterator[int]:
        """Decode ``ids`` after the processed tokens in balanced pieces of at most ``n_batch``,
        asking for logits at positions ``>= first_out`` (of ``ids``) only. Yields each piece's
        number of output rows right after its decode, while they sit in llama.cpp's output buffer."""
        n = len(ids)
        pieces = -(-n // self._n_batch)
        for piece in range(pieces):
            start, stop = n * piece // pieces, n * (piece + 1) // pieces
            m = stop - start
            self._batch.n_tokens = m
            self._batch_token[:m] = ids[start:stop]
            np.add(self._offsets[:m], self._processed, out=self._batch_pos[:m])
            first = min(max(first_out - start, 0), m)
            self._batch_wanted[:first] = 0
            self._batch_wanted[first:m] = 1
            rc = self._lc.llama_decode(self._ctx, self._batch)
            if rc != 0:
                # the cells of a failed batch may be partly written: drop them
                self._lc.llama_memory_seq_rm(self._mem, 0, self._processed, -1)
                raise RuntimeError(f"{self.name}: llama_decode returned {rc} at position {self._processed}")
            self._tokens.extend(ids[start:stop])
            self._processed += m
            yield m - first

    @property
    def pads_passes(self) -> bool:  # type: ignore[override]
        """True when passes are padded to ``min_pass`` > 1 tokens (see ``Drafter``)."""
        return self.min_pass > 1

    @property
    def shape_sensitive(self) -> bool:
        """The profiler measures acceptance in the shapes used at run time when this is True."""
        return self.min_pass == 1

    @contextmanager
    def decoding_alone(self) -> Iterator[None]:
        """llama.cpp's own decoding: one-token passes through its one-token kernels, the fastest
        way this model decodes alone (the autoregressive baseline of a llama.cpp target)."""
        saved, self.min_pass = self.min_pass, 1
        try:
            yield
        finally:
            self.min_pass = saved

    def close(self) -> None:
        """Free llama.cpp's model, context and batch now rather than at garbage collection."""
        self._free_batch()
        self._llama.close()
