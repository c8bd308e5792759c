"""The loop ``Chain.generate`` runs: staged (polybasic) speculative decoding over ``[target, M2, ..., Mk]``.

Follows docs/staged-decoding.md literally. Terms:

* *round*: one verification by the target. A :class:`~polyplan.executor.control.Controller`
  picks, between rounds only, which members take part and their gammas (a ``RoundSetting``);
  inside a round the *levels* are those members in chain order, level 0 being the target.
* *block*: the tokens a level hands up to be verified; *gamma* ``g_j``: the length level j aims
  for (its buffer grows until it holds ``>= g_j`` tokens).
* bottom level: drafts ``g`` tokens, one forward pass each (tokens it has not seen yet --
  corrections from above, or everything when it rejoins after a bypassed round -- ride along in
  its first pass); a point-mass drafter ``propose``s up to ``g`` tokens at once.
* intermediate level j: until its buffer holds ``>= g_j`` tokens (or an end-of-sequence token,
  after which nothing can be emitted), asks the level below for a block, verifies it in ONE pass
  and keeps the accepted prefix plus its own token (correction or bonus). It hands up, with the
  tokens, its OWN processed distribution at each position: that is the ``q`` the level above
  verifies against, and why the chain is lossless (each buffer is distributed exactly as that
  level's autoregressive distribution, whatever its length).
* target: verifies the block from level 1 in one pass and commits the accepted prefix + 1.
* draft trees (``tree_nodes``): a member with ``tree_nodes > 1`` that is the bottom of a round
  drafts a tree of up to that many nodes (depth up to its gamma) instead of a sequence; the level
  above scores the whole tree in one pass and keeps one path (:mod:`polyplan.executor.tree`). What
  that level hands up is its accepted path plus its own token: a sequence, as always.

Host synchronisation: exactly one per verification (accepted count, next token and the block's
token ids in one ``tolist``). Drafting, sampling and acceptance tests stay on the device.

The :class:`Chain` a user builds (its members checked, each call's arguments and windows) lives in
:mod:`polyplan.executor.front` (``polyplan.Chain``, ``polyplan.executor.Chain``)."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import torch

from polyplan.executor.clock import ForwardClock
from polyplan.executor.control import Controller, RoundSetting, RoundTiming, check_setting
from polyplan.executor.draft import GREEDY, Draft
from polyplan.executor.draft_stop import draft_stops
from polyplan.executor.request import GenerationResult
from polyplan.executor.sampling import SamplingParams, sample, verify_greedy, verify_sampled
from polyplan.executor.stats import GenerationStats, LevelStats
from polyplan.executor.tree import DraftTree, build_tree, common_prefix, walk_greedy, walk_sampled
from polyplan.models.drafter import Drafter

if TYPE_CHECKING:  # the loop runs a Chain; front.py, where it lives, imports this module
    from polyplan.executor.front import Chain

_Out = TypeVar("_Out")  # what a timed pass returns: logits, or a greedy token (and its gap)

__all__ = ["GenerationResult", "device_seed"]  # the result is imported from here too


def device_seed(seed: int, device: torch.device, home: torch.device) -> int:
    """The seed of one device's generator: ``seed`` on the chain's home device (the target's), a
    distinct one derived from it on every other, so two devices never draw the same stream."""
    if device == home:
        return seed
    return (seed * 1_000_003 + zlib.crc32(str(device).encode())) % (2**63 - 1)


class _Verdict(NamedTuple):
    """What one verification decided, still on the device (no state changed yet)."""

    accepted: torch.Tensor  # 0-dim long: length of the accepted prefix of the block
    token: torch.Tensor  # 0-dim long: the verifier's own token after that prefix
    p: torch.Tensor | None  # [m+1, V] the verifier's processed distributions; None when greedy


class _StagedRun:
    """One generation. State and its invariants, at every point between two calls below:

    * ``W[:length]`` is the working sequence: the committed tokens (prompt + output) followed by
      the buffers of the levels currently building theirs. Positions ``>= length`` are scratch.
    * ``host`` is ``W[:length]`` as a Python list, except while a MODEL bottom level drafts: its
      tokens then exist only on the device until the verification above syncs them (syncing per
      drafted token would cost a host round trip per token).
    * every member ``d`` (taking part in this round or not) has processed exactly ``W[:d.processed]``:
      a verification that truncates ``W`` rolls back every member that covered the discarded tail.
    * level j's buffer never ends past ``total - j`` (see :meth:`_cap`).
    """

    def __init__(
        self,
        chain: Chain,
        drafters: list[Drafter],
        prompt: list[int],
        max_new_tokens: int,
        params: SamplingParams,
        seed: int,
        eos: list[int],
        stream: Callable[[list[int]], None] | None,
        controller: Controller,
    ) -> None:
        self.drafters = drafters  # the chain's members as this call runs them (windows: Chain.generate)
        self.params = params
        self.eos = set(eos)
        self.stream = stream
        self.controller = controller
        # each round's measured time, for a controller that judges speed (optional in the protocol)
        self.observe_round = getattr(controller, "observe_round", None)
        self.prompt_len = len(prompt)
        self.total = len(prompt) + max_new_tokens
        self.home = self.drafters[0].device
        self.W = torch.zeros(self.total + 1, dtype=torch.long, device=self.home)
        self.W[: len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        self.length = len(prompt)
        self.host: list[int] = list(prompt)
        self.seed = seed
        self.generators: dict[torch.device, torch.Generator] = {}
        self.clocks = [ForwardClock(d.device) for d in self.drafters]
        # a member's first pass of a generation (lazy: when the chain first uses it) is its prefill
        self.prefill_clocks = [ForwardClock(d.device) for d in self.drafters]
        # for RoundTiming: the current round's prefill seconds, the passes since the last report
        self.round_prefill_s: float | None = 0.0
        self.pass_log: list[tuple[int, float, int, int]] = []
        self.prefill_log: list[tuple[int, float, int]] = []
        self.point_mass = [d.point_mass for d in self.drafters]
        self.tree_nodes = [1, *chain.tree_nodes]  # per member; the target's entry is unused
        # member -> its draft stop: read only while it drafts greedily for the target (level 1)
        self.stops = draft_stops(chain.draft_stop, [d.name for d in self.drafters])
        # this round's levels (chain indices) and their gammas: set by _apply between rounds
        self.levels: tuple[int, ...] = ()
        self.gammas: tuple[int, ...] = ()
        self.stats = GenerationStats(
            levels=[LevelStats(d.name, None if i == 0 else chain.gammas[i - 1]) for i, d in enumerate(self.drafters)],
            prompt_tokens=len(prompt),
        )

    # -- helpers -----------------------------------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self.generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(device_seed(self.seed, device, self.home))
            self.generators[device] = gen
        return gen

    def _cap(self, level: int) -> int:
        """The longest ``W`` level ``level`` may build: ``total - level``.

        Every level above appends exactly one token of its own per verification, so a buffer
        ending past this could push the output beyond ``max_new_tokens`` (and past the context
        the user allowed), and any pass spent on it would be wasted."""
        return self.total - level

    def _apply(self, setting: RoundSetting) -> None:
        """Take the controller's setting for the next round (only ever between rounds)."""
        for member, window in setting.windows:
            d = self.drafters[member]
            if d.processed == 0 and member in setting.members:
                d.set_window(window)  # lazy prefill: the window is fixed by the member's first pass
        new = (tuple(setting.members), tuple(int(g) for g in setting.gammas))
        if new == (self.levels, self.gammas):
            return
        check_setting(setting, self.point_mass)
        self.levels, self.gammas = new
        self.stats.setting_changes.append(
            {
                "at_token": self.length - self.prompt_len,
                "members": [self.drafters[m].name for m in self.levels],
                "gammas": list(self.gammas),
                "reason": setting.reason,
            }
        )

    def _feed_from(self, member: int, base: int) -> int:
        """Where ``member``'s next pass must start so that it yields logits for position ``base``.

        The distribution of ``W[base]`` comes from the pass over ``W[base - 1]``: a member that
        already processed it is rolled back by one (to ``base - 1``) so the token is re-fed; one
        that lags (prefill, or back after a bypassed round) starts where it stopped."""
        d = self.drafters[member]
        if d.processed >= base:
            d.rollback(base - 1)
        return d.processed

    def _forward(self, member: int, feed: torch.Tensor, last: int) -> torch.Tensor:
        """One pass of ``member`` over ``feed``; logits of the last ``last`` fed positions."""
        d = self.drafters[member]
        return self._timed(member, int(feed.shape[0]), lambda: d.score(feed, last=last)[-last:])

    def _timed(self, member: int, n_tokens: int, forward: Callable[[], _Out]) -> _Out:
        """Run one pass of ``member`` over ``n_tokens`` tokens, counted and timed (its first pass
        of the generation as its prefill)."""
        d, st = self.drafters[member], self.stats.levels[member]
        prefill, cached = d.processed == 0, d.processed
        clock = self.prefill_clocks[member] if prefill else self.clocks[member]
        started = clock.start()
        logits = forward()
        seconds = clock.stop(started)
        self._round_pass(member, prefill, seconds, n_tokens, cached)
        if prefill:
            st.prefill_tokens += n_tokens
        st.forward_passes += 1
        st.tokens_processed += n_tokens
        return logits

    def _round_pass(self, member: int, prefill: bool, seconds: float | None, n_tokens: int, cached: int) -> None:
        """Note a pass for the next :class:`RoundTiming` (what a time-judging controller reads)."""
        if self.observe_round is None:
            return
        if seconds is None:
            self.round_prefill_s = None  # not host-timed: the round's prefill share is unknown
        elif prefill:
            if self.round_prefill_s is not None:
                self.round_prefill_s += seconds
            self.prefill_log.append((member, seconds, n_tokens))
        else:
            self.pass_log.append((member, seconds, n_tokens, cached))

    def _report_round(self, seconds: float, committed: int) -> None:
        timing = RoundTiming(seconds, committed, self.round_prefill_s, tuple(self.pass_log), tuple(self.prefill_log))
        self.pass_log.clear()
        self.prefill_log.clear()
        self.observe_round(timing)

    def _through_eos(self, tokens: list[int]) -> list[int]:
        """``tokens`` up to and including the first end-of-sequence token."""
        for i, t in enumerate(tokens):
            if t in self.eos:
                return tokens[: i + 1]
        return tokens

    # -- the three roles ---------------------------------------------------------------------
    def _draft_bottom(self, level: int) -> Draft:
        """The bottom level drafts up to its gamma onto ``W`` (a tree: not onto ``W`` until
        verified); returns how the level above is to test the drafts."""
        member = self.levels[level]
        self.stats.levels[member].count_gamma(self.gammas[level - 1])
        d = self.drafters[member]
        base = self.length
        n = min(self.gammas[level - 1], self._cap(level) - base)
        if self.tree_nodes[member] > 1 and n > 0:
            return Draft(tree=self._draft_tree(member, base, n))
        if d.point_mass:
            proposal = self._through_eos([int(t) for t in d.propose(self.host, n)][:n]) if n > 0 else []
            if proposal:
                self.W[base : base + len(proposal)] = torch.tensor(proposal, dtype=torch.long)
            self.length += len(proposal)
            self.host.extend(proposal)
            return Draft(point_mass=True)  # q is one-hot at each proposal: verify_sampled never builds it
        if n <= 0:
            return GREEDY if self.params.greedy else Draft(torch.empty(0, d.vocab_size, device=d.device))
        if self.params.greedy:
            self._draft_greedy(level, member, base, n)
            return GREEDY
        feed = self.W[self._feed_from(member, base) : self.length]
        qs = []
        gen = self._generator(d.device)
        for _ in range(n):
            q = self.params.probs(self._forward(member, feed, 1))
            token = sample(q, gen)
            qs.append(q)
            self.W[self.length : self.length + 1] = token
            feed = self.W[self.length : self.length + 1]
            self.length += 1
        return Draft(torch.cat(qs))

    def _draft_greedy(self, level: int, member: int, base: int, n: int) -> None:
        """Up to ``n`` greedy drafts, each the member's own argmax (llama.cpp's without copying the
        row). Drafting for the target with a draft stop, it ends once the drafted tokens' chance
        of all being accepted falls below the stop's bound (polyplan.executor.draft_stop)."""
        d = self.drafters[member]
        stop = self.stops.get(member) if level == 1 else None
        all_accepted = 1.0
        feed = self.W[self._feed_from(member, base) : self.length]
        for i in range(n):
            if stop is None:
                token = self._timed(member, int(feed.shape[0]), lambda f=feed: d.score_argmax(f))
            else:
                token, gap = self._timed(member, int(feed.shape[0]), lambda f=feed: d.score_argmax_gap(f))
                all_accepted *= stop.acceptance_at(gap)
            self.W[self.length : self.length + 1] = token
            feed = self.W[self.length : self.length + 1]
            self.length += 1
            if stop is not None and all_accepted < stop.stop_below and i + 1 < n:
                self.stats.levels[member].draft_stops += 1
                return

    def _draft_tree(self, member: int, base: int, max_depth: int) -> DraftTree:
        """The bottom member drafts a tree after ``W[:base]``: one pass for the root's distribution,
        one per expanded node (the member's cache follows the path being expanded)."""
        d = self.drafters[member]
        root = self._forward(member, self.W[self._feed_from(member, base) : base], 1)[0]

        def expand(tree: DraftTree, node: int) -> torch.Tensor:
            path = tree.path_to(node)
            keep = common_prefix(tree.drafter_path, path)
            d.rollback(base + keep)
            feed = torch.tensor([tree.tokens[i] for i in path[keep:]], dtype=torch.long, device=d.device)
            tree.drafter_path = path
            return self._forward(member, feed, 1)[0]

        gen = None if self.params.greedy else self._generator(d.device)
        tree = build_tree(base, root, expand, self.params, self.tree_nodes[member], max_depth, self.eos, gen)
        self.stats.levels[member].record_tree(len(tree), tree.expansions)
        return tree

    def _build_block(self, level: int) -> Draft:
        """Level ``level`` (>= 1) builds its block on ``W``; returns the block's q (this level's
        own processed distributions; none when greedy)."""
        if level == len(self.levels) - 1:
            return self._draft_bottom(level)
        gamma, cap = self.gammas[level - 1], self._cap(level)
        self.stats.levels[self.levels[level]].count_gamma(gamma)
        start = self.length
        parts: list[torch.Tensor] = []
        while self.length - start < gamma and self.length < cap:
            base = self.length
            below = self._build_block(level + 1)
            kept, own = self._verify(level, base, below)
            if own is not None:
                parts.append(own)
            if not self.eos.isdisjoint(kept):
                break  # nothing after an end-of-sequence token can be emitted: hand up now
        if self.params.greedy:
            return GREEDY
        d = self.drafters[self.levels[level]]
        return Draft(torch.cat(parts) if parts else torch.empty(0, d.vocab_size, device=d.device))

    def _verify(self, level: int, base: int, draft: Draft) -> tuple[list[int], torch.Tensor | None]:
        """Level ``level`` verifies ``W[base:length]`` (or the draft's tree) and commits its verdict.
        Returns the kept tokens (accepted prefix + own token) and this level's p at those
        positions (None when greedy)."""
        if draft.tree is not None:
            return self._verify_tree(level, base, draft.tree)
        verdict, block = self._score_and_accept(level, base, draft)
        # the one host sync of this verification
        synced = torch.cat([verdict.accepted.view(1), verdict.token.view(1), block]).tolist()
        accepted, token = synced[0], synced[1]
        kept = synced[2 : 2 + accepted] + [token]
        self._commit(level, base, accepted, verdict.token, kept)
        return kept, (None if verdict.p is None else verdict.p[: accepted + 1])

    def _verify_tree(self, level: int, base: int, tree: DraftTree) -> tuple[list[int], torch.Tensor | None]:
        """Level ``level`` scores the tree drafted after ``W[:base]`` in one pass, walks it
        (greedy or recursive rejection), keeps the accepted path in every cache and commits it."""
        member = self.levels[level]
        d = self.drafters[member]
        prefix = self.W[self._feed_from(member, base) : base]
        nodes = torch.tensor(tree.tokens, dtype=torch.long, device=d.device)
        rows = self._timed(member, int(prefix.shape[0]) + len(tree), lambda: d.score_tree(prefix, nodes, tree.parents))
        if self.params.greedy:
            path, token = walk_greedy(tree, rows.argmax(dim=-1).tolist())
            own = None
        else:
            p = self.params.probs(rows)
            path, token = walk_sampled(tree, p, self._generator(d.device))
            own = p.index_select(0, torch.tensor([0] + [1 + i for i in path], device=p.device))
        d.keep_tree_path(path)
        drafter = self.drafters[self.levels[level + 1]]
        if drafter.processed > base:  # its cache follows the last path it expanded
            drafter.rollback(base + common_prefix(tree.drafter_path, path))
        accepted = [tree.tokens[i] for i in path]
        if accepted:
            self.W[base : base + len(accepted)] = torch.tensor(accepted, dtype=torch.long, device=self.home)
        self.length = base + len(accepted)
        kept = [*accepted, token]
        self.stats.levels[self.levels[level + 1]].record_tree_path(tree, path)
        self._commit(level, base, len(accepted), torch.tensor(token), kept, drafted=len(tree), offered=tree.depth)
        return kept, own

    def _score_and_accept(self, level: int, base: int, draft: Draft) -> tuple[_Verdict, torch.Tensor]:
        """One pass of the level's model over the block ``W[base:length]`` and the acceptance
        test; changes nothing but that model's cache (which now covers the whole block)."""
        member = self.levels[level]
        dev = self.drafters[member].device
        m = self.length - base
        rows = self._forward(member, self.W[self._feed_from(member, base) : self.length], m + 1)
        block = self.W[base : self.length].to(dev, non_blocking=True)
        if self.params.greedy:
            accepted, token = verify_greedy(rows, block)
            return _Verdict(accepted, token, None), block
        p = self.params.probs(rows)
        accepted, token = verify_sampled(p, draft.q_on(dev, m), block, self._generator(dev))
        return _Verdict(accepted, token, p), block

    def _commit(
        self,
        level: int,
        base: int,
        accepted: int,
        token: torch.Tensor,
        kept: list[int],
        drafted: int | None = None,
        offered: int | None = None,
    ) -> None:
        """Truncate ``W`` after the accepted prefix, append the verifier's token, roll back every
        member that covered the discarded tail, and record the verification. A tree passes its
        node count as ``drafted`` and its depth as ``offered`` (the positions it proposed, what a
        controller's per-position acceptance estimate counts)."""
        drafted = self.length - base if drafted is None else drafted
        offered = drafted if offered is None else offered
        new_len = base + accepted
        for d in self.drafters:
            if d.processed > new_len:
                d.rollback(new_len)
        self.W[new_len : new_len + 1] = token.to(self.home, non_blocking=True)
        self.length = new_len + 1
        del self.host[base:]
        self.host.extend(kept)
        verifier = self.levels[level]
        self.stats.levels[verifier].record_verification(drafted, accepted)
        if level + 1 < len(self.levels):
            self.controller.observe(verifier, self.levels[level + 1], offered, accepted)

    # -- the target loop ---------------------------------------------------------------------
    def run(self) -> tuple[list[int], str]:
        started = time.perf_counter()
        for d in self.drafters:
            d.reset()
        target = self.drafters[0]
        if target.prefills_apart and self.prompt_len > 1:
            # the prompt's last token then goes with the first verification, alone or in a chain alike
            self._timed(0, self.prompt_len - 1, lambda: target.score(self.W[: self.prompt_len - 1], last=1))
        setting = self.controller.start(len(self.drafters), list(self.host), self.total - self.prompt_len)
        out: list[int] = []
        reason = "length"
        while self.length < self.total:
            self._apply(setting)
            base = self.length
            self.round_prefill_s = 0.0
            round_started = time.perf_counter()
            # a round of the target alone verifies an empty block: plain autoregressive decoding
            draft = self._build_block(1) if len(self.levels) > 1 else GREEDY
            new, _ = self._verify(0, base, draft)
            if self.observe_round is not None:
                self._report_round(time.perf_counter() - round_started, len(new))
            if not self.eos.isdisjoint(new):
                new, reason = self._through_eos(new), "eos"
            out.extend(new)
            if self.stream is not None and new:
                self.stream(new)
            if reason == "eos":
                break
            setting = self.controller.next_round(self.host)
        assert self.length <= self.total, "the caps keep every level inside the requested length"
        self.stats.new_tokens = len(out)
        for level, clock, prefill in zip(self.stats.levels, self.clocks, self.prefill_clocks, strict=True):
            level.prefill_time_s = prefill.total()
            level.model_time_s = clock.total() + level.prefill_time_s
            level.tokens_per_pass = len(out) / level.forward_passes if level.forward_passes else 0.0
        self.stats.wall_time_s = time.perf_counter() - started
        return out, reason
