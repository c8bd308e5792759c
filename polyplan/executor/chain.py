"""``Chain``: staged (polybasic) speculative decoding over ``[target, M2, ..., Mk]``.

Follows docs/staged-decoding.md literally. All levels share ONE working sequence
``W`` = committed tokens followed by the buffers still being built by the levels above the one
currently drafting; every model's KV cache covers a prefix of ``W``.

* bottom ``Mk``: drafts ``g_k`` tokens, one forward pass each; unseen tokens (corrections from
  above) ride along in the first pass. A point-mass drafter ``propose``s up to ``g_k`` tokens.
* intermediate ``Mj``: until its buffer holds ``>= g_j`` tokens (or an end-of-sequence token, after
  which nothing can be emitted): ask below for a block, verify it in ONE pass, keep the accepted
  prefix plus its own token (correction or bonus). It hands up,
  with the tokens, its OWN processed distribution at each position: that is the ``q`` the level
  above verifies against, and why the chain is lossless (each buffer is distributed exactly as
  that level's autoregressive distribution, whatever its length).
* target ``M1``: verifies the block from ``M2`` in one pass and commits accepted prefix + 1.
A rejection truncates ``W``; every cache that covers the discarded tokens is rolled back.

Drafting is capped so no level's hand-up can push the final sequence past
``prompt + max_new_tokens`` (each level above appends exactly one token per verification):
the context limit is respected and no pass is spent on tokens that could never be emitted.

Host synchronisation: exactly one per verification (accepted count, next token and the block's
token ids in one ``tolist``). Drafting, sampling and acceptance tests stay on the device."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from polyplan.errors import UserError
from polyplan.executor.sampling import SamplingParams, sample, verify_greedy, verify_sampled
from polyplan.executor.stats import GenerationStats, LevelStats
from polyplan.models.drafter import Drafter, check_same_vocabulary
from polyplan.models.model_drafter import ModelDrafter


@dataclass
class GenerationResult:
    #: the new token ids (prompt excluded)
    tokens: list[int]
    #: decoded new text when a tokenizer is known (special tokens skipped), else None
    text: str | None
    stats: GenerationStats
    #: "eos" or "length"
    finish_reason: str


def as_drafter(member: Any, position: int) -> Drafter:
    """A Drafter as is; a transformers causal LM wrapped in ModelDrafter."""
    if isinstance(member, Drafter):
        return member
    if isinstance(member, torch.nn.Module) and hasattr(member, "config"):
        path = str(getattr(member.config, "name_or_path", "") or "").rstrip("/")
        name = path.rsplit("/", 1)[-1] or f"{type(member).__name__}#{position}"
        return ModelDrafter(member, name)
    raise UserError(
        f"chain member {position} is a {type(member).__name__}: expected a polyplan Drafter or a "
        "transformers causal LM"
    )


class _ForwardClock:
    """Wall time inside one model's forwards. CPU: perf_counter (forwards are synchronous).
    CUDA: events, read once at the end, so timing adds no host sync to the loop."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds = 0.0
        self._events: list[tuple[Any, Any]] = []

    def start(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, started: Any) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((started, end))
        else:
            self.seconds += time.perf_counter() - started

    def total(self) -> float:
        if self._events:
            self._events[-1][1].synchronize()
            self.seconds += sum(a.elapsed_time(b) for a, b in self._events) / 1000.0
            self._events.clear()
        return self.seconds


class Chain:
    """A target and its drafters, each drafting for the one above it.

    ``Chain([target])`` is plain autoregressive decoding, ``Chain([target, draft], gammas=[g])``
    classic speculative decoding. Members are :class:`Drafter` instances or transformers causal
    LMs (wrapped in ``ModelDrafter``); a point-mass (model-free) drafter may only be the bottom."""

    def __init__(
        self,
        members: Sequence[Any],
        gammas: Sequence[int] = (),
        tokenizer: Any = None,
    ) -> None:
        if isinstance(members, (Drafter, torch.nn.Module)):
            members = [members]
        if len(members) == 0:
            raise UserError("a chain needs at least one model (the target)")
        gammas = list(gammas)
        if len(gammas) != len(members) - 1:
            raise UserError(
                f"a chain of {len(members)} members needs {len(members) - 1} gammas (one per drafter, "
                f"top to bottom), got {len(gammas)}: {gammas}"
            )
        for g in gammas:
            if isinstance(g, bool) or not isinstance(g, int) or g < 1:
                raise UserError(f"every gamma must be an integer >= 1, got {gammas}")
        self.drafters: list[Drafter] = [as_drafter(m, i) for i, m in enumerate(members)]
        self.gammas: list[int] = gammas
        for i, d in enumerate(self.drafters[:-1]):
            if d.point_mass:
                role = "the target" if i == 0 else f"level {i + 1} of {len(self.drafters)}"
                raise UserError(
                    f"{d.name} is a model-free (point-mass) drafter and cannot verify, so it cannot be "
                    f"{role}: put it at the bottom of the chain"
                )
        if self.drafters[0].point_mass:
            raise UserError(f"{self.drafters[0].name} is model-free and cannot be the target")
        check_same_vocabulary(self.drafters)
        self.tokenizer = tokenizer if tokenizer is not None else getattr(self.drafters[0], "tokenizer", None)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.drafters]

    def __repr__(self) -> str:
        return f"Chain({' <- '.join(self.names)}, gammas={self.gammas})"

    def default_eos_token_ids(self) -> list[int]:
        """EOS ids from the target model's generation config, else from the tokenizer."""
        model = getattr(self.drafters[0], "model", None)
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if eos is None and self.tokenizer is not None:
            eos = getattr(self.tokenizer, "eos_token_id", None)
        return _as_id_list(eos)

    def generate(
        self,
        input_ids: Any,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        eos_token_id: int | Sequence[int] | None = None,
        stream: Callable[[list[int]], None] | None = None,
    ) -> GenerationResult:
        """Generate up to ``max_new_tokens`` tokens after ``input_ids`` (list, 1-D or [1, n] tensor).

        ``eos_token_id``: None uses the target's generation config (or the tokenizer); pass ``[]``
        to never stop early. ``stream`` is called with each list of newly committed tokens."""
        prompt = _prompt_list(input_ids, self.drafters[0].vocab_size)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise UserError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        params = SamplingParams(float(temperature), top_k, top_p)
        eos = self.default_eos_token_ids() if eos_token_id is None else _as_id_list(eos_token_id)
        total = len(prompt) + max_new_tokens
        for d in self.drafters:
            if d.max_context is not None and total > d.max_context:
                raise UserError(
                    f"{len(prompt)} prompt tokens + {max_new_tokens} new tokens exceed the context of "
                    f"{d.name} ({d.max_context} tokens): shorten the prompt or lower max_new_tokens"
                )
        run = _StagedRun(self, prompt, max_new_tokens, params, seed, eos, stream)
        tokens, reason = run.run()
        text = None
        if self.tokenizer is not None:
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return GenerationResult(tokens=tokens, text=text, stats=run.stats, finish_reason=reason)


def _as_id_list(eos: Any) -> list[int]:
    if eos is None:
        return []
    if isinstance(eos, int):
        return [eos]
    return [int(e) for e in eos]


def _prompt_list(input_ids: Any, vocab_size: int) -> list[int]:
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 2:
            if input_ids.shape[0] != 1:
                raise UserError(f"batch size must be 1, got input_ids of shape {tuple(input_ids.shape)}")
            input_ids = input_ids[0]
        if input_ids.dim() != 1:
            raise UserError(f"input_ids must be 1-D or [1, n], got shape {tuple(input_ids.shape)}")
        prompt = input_ids.tolist()
    else:
        prompt = [int(t) for t in input_ids]
    if not prompt:
        raise UserError(
            "the prompt is empty: a causal LM needs at least one token to condition on "
            "(e.g. the tokenizer's BOS token)"
        )
    if min(prompt) < 0 or max(prompt) >= vocab_size:
        raise UserError(f"prompt token ids must be in [0, {vocab_size}), got {min(prompt)}..{max(prompt)}")
    return prompt


class _StagedRun:
    """State of one generation: the working sequence, per-level clocks and stats."""

    def __init__(
        self,
        chain: Chain,
        prompt: list[int],
        max_new_tokens: int,
        params: SamplingParams,
        seed: int,
        eos: list[int],
        stream: Callable[[list[int]], None] | None,
    ) -> None:
        self.drafters = chain.drafters
        self.gammas = chain.gammas
        self.bottom = len(self.drafters) - 1
        self.params = params
        self.eos = set(eos)
        self.stream = stream
        self.prompt_len = len(prompt)
        self.total = len(prompt) + max_new_tokens
        self.home = self.drafters[0].device
        # W: preallocated; positions >= self.length are scratch
        self.W = torch.zeros(self.total + 1, dtype=torch.long, device=self.home)
        self.W[: len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        self.length = len(prompt)
        self.host: list[int] = list(prompt)  # host copy of W[:length] (complete after each verification)
        self.generators: dict[torch.device, torch.Generator] = {}
        self.seed = seed
        self.clocks = [_ForwardClock(d.device) for d in self.drafters]
        # ModelDrafter can skip the LM head for positions nobody reads (prompt prefill, unseen tokens)
        self.partial_logits = [isinstance(d, ModelDrafter) for d in self.drafters]
        self.stats = GenerationStats(
            levels=[LevelStats(d.name, None if i == 0 else self.gammas[i - 1]) for i, d in enumerate(self.drafters)],
            prompt_tokens=len(prompt),
        )

    # -- helpers -----------------------------------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self.generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            self.generators[device] = gen
        return gen

    def _forward(self, level: int, feed: torch.Tensor, last: int) -> torch.Tensor:
        """Logits of the last ``last`` fed positions (the only ones the chain uses)."""
        clock = self.clocks[level]
        started = clock.start()
        if self.partial_logits[level]:
            logits = self.drafters[level].score(feed, last=last)
        else:
            logits = self.drafters[level].score(feed)[-last:]
        clock.stop(started)
        st = self.stats.levels[level]
        st.forward_passes += 1
        st.tokens_processed += int(feed.shape[0])
        return logits

    def _ready_to_score(self, level: int, base: int) -> int:
        """Make sure the level will re-feed at least the token before position ``base``."""
        d = self.drafters[level]
        if d.processed >= base:
            d.rollback(base - 1)
        return d.processed

    # -- the three roles ---------------------------------------------------------------------
    def _draft_bottom(self, n: int) -> torch.Tensor | None:
        """Bottom level drafts ``n`` tokens onto W; returns their q (None when greedy)."""
        level = self.bottom
        d = self.drafters[level]
        base = self.length
        if n <= 0:
            return None if self.params.greedy else torch.empty(0, d.vocab_size, device=self.home)
        if d.point_mass:
            proposal = self._through_eos([int(t) for t in d.propose(self.host, n)][:n])
            if proposal:
                self.W[base : base + len(proposal)] = torch.tensor(proposal, dtype=torch.long)
            self.length += len(proposal)
            self.host.extend(proposal)
            if self.params.greedy:
                return None
            ids = self.W[base : self.length]
            return torch.nn.functional.one_hot(ids, d.vocab_size).float()
        start = self._ready_to_score(level, base)
        feed = self.W[start : self.length]
        qs = []
        gen = None if self.params.greedy else self._generator(d.device)
        for _ in range(n):
            last = self._forward(level, feed, 1)
            if self.params.greedy:
                token = last.argmax(dim=-1)
            else:
                q = self.params.probs(last)
                token = sample(q, gen)
                qs.append(q)
            self.W[self.length : self.length + 1] = token
            feed = self.W[self.length : self.length + 1]
            self.length += 1
        return None if self.params.greedy else torch.cat(qs)

    def _through_eos(self, tokens: list[int]) -> list[int]:
        """``tokens`` up to and including the first end-of-sequence token."""
        for i, t in enumerate(tokens):
            if t in self.eos:
                return tokens[: i + 1]
        return tokens

    def _fill(self, level: int, cap: int) -> torch.Tensor | None:
        """Level ``level`` (>= 1) builds its block on W, never past length ``cap``; returns the
        block's q (this level's own processed distributions), None when greedy."""
        gamma = self.gammas[level - 1]
        if level == self.bottom:
            return self._draft_bottom(min(gamma, cap - self.length))
        start = self.length
        parts: list[torch.Tensor] = []
        while self.length - start < gamma and self.length < cap:
            base = self.length
            q_below = self._fill(level + 1, cap - 1)
            kept, own = self._verify(level, base, q_below)
            if own is not None:
                parts.append(own)
            if not self.eos.isdisjoint(kept):
                break  # nothing after an end-of-sequence token can be emitted: hand up now
        if self.params.greedy:
            return None
        if not parts:
            return torch.empty(0, self.drafters[level].vocab_size, device=self.drafters[level].device)
        return torch.cat(parts)

    def _verify(self, level: int, base: int, q: torch.Tensor | None) -> tuple[list[int], torch.Tensor | None]:
        """Level verifies W[base:length] in one pass, truncates W after the accepted prefix and
        appends its own token. Returns (accepted prefix + own token, this level's processed
        distribution at those positions or None when greedy)."""
        d = self.drafters[level]
        dev = d.device
        m = self.length - base
        start = self._ready_to_score(level, base)
        rows = self._forward(level, self.W[start : self.length], m + 1)
        draft = self.W[base : self.length].to(dev, non_blocking=True)
        if self.params.greedy:
            accepted_t, token_t = verify_greedy(rows, draft)
            p = None
        else:
            p = self.params.probs(rows)
            q_dev = q.to(dev, non_blocking=True) if q is not None and m else q
            accepted_t, token_t = verify_sampled(p, q_dev, draft, self._generator(dev))
        # the one host sync of this verification
        synced = torch.cat([accepted_t.view(1), token_t.view(1), draft]).tolist()
        accepted, token, block = synced[0], synced[1], synced[2:]
        new_len = base + accepted
        d.rollback(new_len)  # its cache covered the whole block
        for lower in self.drafters[level + 1 :]:
            if lower.processed > new_len:
                lower.rollback(new_len)
        self.W[new_len : new_len + 1] = token_t.to(self.home, non_blocking=True)
        self.length = new_len + 1
        del self.host[base:]
        kept = block[:accepted] + [token]
        self.host.extend(kept)
        self.stats.levels[level].record_verification(m, accepted)
        return kept, (None if p is None else p[: accepted + 1])

    # -- the target loop ---------------------------------------------------------------------
    def run(self) -> tuple[list[int], str]:
        started = time.perf_counter()
        for d in self.drafters:
            d.reset()
        out: list[int] = []
        reason = "length"
        while self.length < self.total:
            base = self.length
            q = self._fill(1, self.total - 1) if self.bottom >= 1 else None
            new, _ = self._verify(0, base, q)
            if not self.eos.isdisjoint(new):
                new, reason = self._through_eos(new), "eos"
            out.extend(new)
            if self.stream is not None and new:
                self.stream(new)
            if reason == "eos":
                break
        if self.length > self.total:  # cannot happen with the caps; keep the promise regardless
            out = out[: self.total - self.prompt_len]
        self.stats.new_tokens = len(out)
        for level, clock in zip(self.stats.levels, self.clocks):
            level.model_time_s = clock.total()
            level.tokens_per_pass = len(out) / level.forward_passes if level.forward_passes else 0.0
        self.stats.wall_time_s = time.perf_counter() - started
        return out, reason
