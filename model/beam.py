"""Beam search: the reference's "approximate joint search", decoded incrementally.

Both directions are searched in one batch (left-to-right from <sos>, right-to-
left from <eos>); every finished hypothesis is then rescored by the opposite
direction, and the two length-normalized log-probabilities are added. The
search itself mirrors the reference's BeamSearchScorer step for step, but each
step feeds one token into a cached decoder state instead of re-decoding the
whole prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from model.cancel import ShouldStop, stop_if_asked
from model.hmer import HMER, direction_targets
from model.syntax import SyntaxRules
from model.vocab import Vocabulary

# What a left-to-right teacher-forced pass over a reading computes: main and auxiliary
# logits [t+1, V] and the last layer's refined attention averaged over the heads [t+1, L]
# (t symbols and <eos>), as the app shows it. Averaged as it is recorded, a long search's
# trace holds an eighth of the per-head maps.
Outputs = tuple[Tensor, Tensor, Tensor]


@dataclass(frozen=True)
class Hypothesis:
    ids: tuple[int, ...]  # symbol ids, left-to-right, without <sos>/<eos>
    score: float  # forward + reverse length-normalized log-probability
    direction: str  # "l2r" or "r2l": the search that found it
    # The best reading's left-to-right outputs when the search or the rescoring already
    # computed them (`beam_search_memory(explain=True)`); None otherwise.
    outputs: Outputs | None = field(default=None, compare=False, repr=False)


class _Trace:
    """What each search step computed, and which row each next row came from, so that a
    finished hypothesis's own outputs can be read back instead of decoded again."""

    def __init__(self) -> None:
        self.steps: list[Outputs] = []  # per step: logits [n, V], aux [n, V], attention [n, L]
        self.parents: list[list[int]] = []  # per step: the row of this step each next row extends
        self.ends: dict[tuple[int, tuple[int, ...]], tuple[int, int]] = {}  # (group, ids) -> (step, row)

    def outputs(self, group: int, ids: tuple[int, ...]) -> Outputs | None:
        """The outputs along the path of hypothesis `ids` (start token first) of `group`,
        if it ended with a stop token (an open beam cut at max_len has no end step)."""
        end = self.ends.get((group, ids))
        if end is None:
            return None
        step, row = end
        rows = [row]
        for s in range(step - 1, -1, -1):
            rows.append(self.parents[s][rows[-1]])
        rows.reverse()  # the row of each step 0..step
        main, aux, attn = (torch.stack([self.steps[s][k][r] for s, r in enumerate(rows)]) for k in range(3))
        return main, aux, attn  # [t+1, V], [t+1, V], [t+1, L]


class _BeamGroup:
    """The finished hypotheses of one (image, direction) search."""

    def __init__(self, beam_size: int, alpha: float, early_stopping: bool) -> None:
        self.beam_size = beam_size
        self.alpha = alpha
        self.early_stopping = early_stopping
        self.beams: list[tuple[float, list[int]]] = []  # (normalized score, ids incl. start)
        self.worst = 1e9
        self.done = False

    def add(self, ids: list[int], sum_logprobs: float) -> None:
        score = sum_logprobs / (len(ids) ** self.alpha)
        if len(self.beams) < self.beam_size or score > self.worst:
            self.beams.append((score, ids))
            if len(self.beams) > self.beam_size:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)

    def is_done(self, best_sum_logprobs: float, cur_len: int) -> bool:
        if len(self.beams) < self.beam_size:
            return False
        if self.early_stopping:
            return True
        return self.worst >= best_sum_logprobs / cur_len**self.alpha


@torch.no_grad()
def _search(
    model: HMER,
    memory: Tensor,
    mem_mask: Tensor,
    vocab: Vocabulary,
    beam_size: int,
    max_len: int,
    alpha: float,
    early_stopping: bool,
    decoder: Any = None,
    group_type: type[_BeamGroup] = _BeamGroup,
    well_formed: bool = True,
    prune: float | None = None,
    should_stop: ShouldStop | None = None,
    trace: _Trace | None = None,
) -> list[_BeamGroup]:
    """Beam search of both directions for all images: groups 0..B-1 are l2r,
    groups B..2B-1 r2l. The batch holds at most beam_size rows per unfinished group
    (dead and pruned beams leave it), and a group leaves it as soon as it is done
    (the reference kept decoding it).
    `decoder` (default: the model's) provides start()/step(); benchmarks pass
    a full-prefix re-decoder here to compare against, and a `group_type` that
    records what each group saw. well_formed: only readings that obey `SyntaxRules`.
    prune (nats): an open beam whose log-probability falls further than this below
    the best candidate of its search at the same step is dropped (None: never; the
    reference's search). should_stop is asked before each step (`model.cancel`).
    trace, when given, records each step's outputs and each row's parent (`_Trace`)."""
    decoder = decoder if decoder is not None else model.decoder
    b = memory.shape[0]
    groups = [group_type(beam_size, alpha, early_stopping) for _ in range(2 * b)]
    n_groups = len(groups)
    device = memory.device
    image_index = torch.arange(b, device=device).repeat(2)  # [2b]
    state = decoder.start(memory, mem_mask, image_index)
    starts = [vocab.sos_id] * b + [vocab.eos_id] * b
    prefixes: list[list[int]] = [[s] for s in starts]  # tokens fed so far, per sequence
    last = torch.tensor(starts, device=device)
    beam_scores = torch.zeros(n_groups, device=device)
    rules = SyntaxRules(vocab, device) if well_formed else None
    syntax = rules.start(torch.arange(n_groups, device=device) >= b) if rules else None
    stop_ids = {vocab.pad_id, vocab.sos_id, vocab.eos_id}
    active = list(range(n_groups))  # groups still searching, in batch order
    rows = [1] * n_groups  # live rows of each active group, contiguous in the batch
    floor_gap = float("inf") if prune is None else prune
    cur_len = 1
    while cur_len < max_len and active:
        stop_if_asked(should_stop)
        logits, aux, attn = decoder.step(state, last, need_aux=trace is not None)
        if trace is not None:
            trace.steps.append((logits, aux, attn.mean(dim=1)))  # attention [n, H, L] -> [n, L]
        logp = F.log_softmax(logits.float(), dim=-1)  # [n, V]
        if rules is not None:
            logp = rules.mask(syntax, last, logp)
        scores = logp + beam_scores[:, None]  # [n, V]
        v = scores.shape[-1]
        if any(r != beam_size for r in rows):  # lay each group out in beam_size slots, empty ones -inf
            slots = torch.tensor([j * beam_size + r for j, count in enumerate(rows) for r in range(count)], device=device)
            scores = scores.new_full((len(active) * beam_size, v), float("-inf")).index_copy_(0, slots, scores)
        top_scores, top = scores.view(len(active), beam_size * v).topk(2 * beam_size, dim=1)  # [G, 2k]
        top_beam, top_tok = (top // v).tolist(), (top % v).tolist()
        top_scores_list = top_scores.tolist()
        new_scores: list[float] = []
        new_tokens: list[int] = []
        new_index: list[int] = []
        still_active, still_rows = [], []
        base = 0  # this group's first row in the current batch
        for j, g in enumerate(active):
            group = groups[g]
            # Candidates further than `prune` below the best are dropped, and so is every
            # slot left empty (more stop tokens than beams among the candidates): the
            # reference kept such dead beams in the batch with score 0, which then
            # outranked every real hypothesis and kept the search running to max_len.
            floor = top_scores_list[j][0] - floor_gap
            kept: list[tuple[float, int, int]] = []  # (score, token, row) of the open beams kept
            for rank, (tok, score, src) in enumerate(zip(top_tok[j], top_scores_list[j], top_beam[j])):
                if score == float("-inf") or score < floor:
                    break  # candidates come best first: the rest are dead or pruned too
                row = base + src
                if tok in stop_ids:
                    if rank < beam_size:
                        group.add(list(prefixes[row]), score)
                        if trace is not None:
                            trace.ends[(g, tuple(prefixes[row]))] = (cur_len - 1, row)
                else:
                    kept.append((score, tok, row))
                if len(kept) == beam_size:
                    break
            base += rows[j]
            group.done = not kept or group.is_done(top_scores_list[j][0], cur_len)
            if not group.done:  # a finished group leaves the batch: no more work for it
                still_active.append(g)
                still_rows.append(len(kept))
                for score, tok, row in kept:
                    new_scores.append(score)
                    new_tokens.append(tok)
                    new_index.append(row)
        active, rows = still_active, still_rows
        if not active:
            break
        if trace is not None:
            trace.parents.append(new_index)
        index = torch.tensor(new_index, device=device)
        state.reorder(index)
        prefixes = [prefixes[i] + [t] for i, t in zip(new_index, new_tokens)]
        beam_scores = torch.tensor(new_scores, device=device)
        last = torch.tensor(new_tokens, device=device)
        if rules is not None:
            syntax = rules.advance(syntax.reorder(index), last)
        cur_len += 1
    final = beam_scores.tolist()
    base = 0
    for g, count in zip(active, rows):  # max_len reached: the open beams count as they are
        if not (rules is not None and groups[g].beams):  # unless finished readings exist: an
            for r in range(base, base + count):  # unfinished one may leave a group open
                groups[g].add(list(prefixes[r]), final[r])
        base += count
    return groups


@torch.no_grad()
def _normalized_logprob(
    model: HMER, memory: Tensor, mem_mask: Tensor, image: Tensor, tgt: Tensor, out: Tensor, vocab: Vocabulary,
    alpha: float, need_attention: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor | None]]:  # fmt: skip
    """Length-normalized log-probability of teacher-forced rows tgt -> out [n, t], row i
    reading image `image[i]` of memory: [n], and the pass's outputs ([n, t, V] twice, and
    [n, H, t, L] if `need_attention`)."""
    extra = {"need_attention": True} if need_attention else {}
    logits, aux, attn = model.decoder(memory, mem_mask, tgt, image_index=image, **extra)
    nll = F.cross_entropy(logits.float().transpose(1, 2), out, ignore_index=vocab.pad_id, reduction="none")
    length = (tgt != vocab.pad_id).sum(dim=1).float()
    return -nll.sum(dim=1) / length**alpha, (logits, aux, attn)


@torch.no_grad()
def beam_search(
    model: HMER,
    imgs: Tensor,
    masks: Tensor,
    vocab: Vocabulary,
    beam_size: int = 10,
    max_len: int = 200,
    alpha: float = 1.0,
    early_stopping: bool = False,
    nbest: int | None = None,
    well_formed: bool = True,
    prune: float | None = None,
) -> list[list[Hypothesis]]:
    """n-best hypotheses per image, best first, each token sequence once (see
    `beam_search_memory` for `nbest`, `well_formed` and `prune`)."""
    memory, mem_mask = model.encode(imgs, masks)
    return beam_search_memory(model, memory, mem_mask, vocab, beam_size, max_len, alpha, early_stopping, nbest=nbest,
                              well_formed=well_formed, prune=prune)  # fmt: skip


@dataclass
class _Found:
    """One finished hypothesis of one direction's search."""

    image: int
    direction: str
    ids: tuple[int, ...]  # left-to-right
    score: float  # length-normalized log-probability in its own direction
    total: float | None = None  # plus the opposite direction's, once known
    outputs: Outputs | None = None  # an r2l find's left-to-right rescoring pass (see `Hypothesis`)


@torch.no_grad()
def beam_search_memory(
    model: HMER,
    memory: Tensor,
    mem_mask: Tensor,
    vocab: Vocabulary,
    beam_size: int = 10,
    max_len: int = 200,
    alpha: float = 1.0,
    early_stopping: bool = False,
    decoder: Any = None,
    nbest: int | None = None,
    well_formed: bool = True,
    prune: float | None = None,
    should_stop: ShouldStop | None = None,
    explain: bool = False,
) -> list[list[Hypothesis]]:
    """Search both directions, then add to each hypothesis the opposite direction's
    score and rank by the sum.

    well_formed (the default) keeps every reading within `SyntaxRules` (balanced
    braces, a group after each script and root), as every CROHME caption is; False
    searches freely, as the reference does.

    nbest None rescores every hypothesis with a full decoder pass, as the
    reference does. A number returns exactly the `nbest` best (the same ones, with
    the same totals, up to float rounding) for much less work, because:
    a sequence that both directions found already has both scores, and a
    hypothesis whose own score is below the nbest-th known total cannot enter the
    top, since the other direction's log-probability is at most 0.

    prune (nats, None by default) drops an open beam once its log-probability
    trails the best candidate of its direction by more than that: fewer rows to
    decode for a confident reading, at the risk of losing a late-blooming one.

    should_stop is asked before each search step and before each group of the rescoring;
    when it answers True, `RecognitionCancelled` is raised (`model.cancel`).

    explain: give each image's best hypothesis the `outputs` of a left-to-right pass over
    it where the work already done has them: the left-to-right search's steps that found
    it, or the left-to-right rescoring of a reading only the other direction found. They
    equal a fresh teacher-forced pass up to float rounding, without running one.
    """
    b = memory.shape[0]
    trace = _Trace() if explain else None
    groups = _search(model, memory, mem_mask, vocab, beam_size, max_len, alpha, early_stopping, decoder,
                     well_formed=well_formed, prune=prune, should_stop=should_stop, trace=trace)  # fmt: skip
    stop_if_asked(should_stop)
    found: list[_Found] = []
    for g, group in enumerate(groups):
        image, direction = g % b, ("l2r" if g < b else "r2l")
        for score, ids in group.beams:
            body = ids[1:]
            found.append(_Found(image, direction, tuple(body if direction == "l2r" else body[::-1]), score))
    if nbest is None:
        _rescore(model, memory, mem_mask, vocab, alpha, found, keep_outputs=explain, should_stop=should_stop)
    else:
        _rescore_top(model, memory, mem_mask, vocab, alpha, found, nbest, keep_outputs=explain, should_stop=should_stop)
    results: list[list[Hypothesis]] = []
    for image in range(b):
        best: dict[tuple[int, ...], Hypothesis] = {}
        for f in found:
            if f.image != image or f.total is None:
                continue
            if f.ids not in best or f.total > best[f.ids].score:
                best[f.ids] = Hypothesis(f.ids, f.total, f.direction)
        ranked = sorted(best.values(), key=lambda h: -h.score)
        if trace is not None and ranked:
            ranked[0] = _with_outputs(ranked[0], image, trace, vocab, found)
        results.append(ranked if nbest is None else ranked[:nbest])
    return results


def _with_outputs(hyp: Hypothesis, image: int, trace: _Trace, vocab: Vocabulary, found: list[_Found]) -> Hypothesis:
    """`hyp` with its left-to-right outputs, where the search or the rescoring computed them."""
    outputs = trace.outputs(image, (vocab.sos_id, *hyp.ids))  # the l2r search found it
    if outputs is None:  # else an r2l find rescored left to right
        outputs = next((f.outputs for f in found if f.image == image and f.ids == hyp.ids and f.outputs), None)
    return Hypothesis(hyp.ids, hyp.score, hyp.direction, outputs)


# The rescoring's rows are read in groups whose ARM input stays under this many elements
# (3 MB of fp32 coverage), each padded only to its own longest row:
# - a whole pass over a long expression's hypotheses holds tens of megabytes of ARM
#   intermediates, far beyond the caches: its groups take 0.80x its time (the 10 longest of
#   the first 60 of 2014, compiled; budgets from 0.8M to 3.2M within 3% of each other), and
#   padding each group to its own longest row 0.94x again (hypotheses differ in length by up
#   to a quarter);
# - a recognition asked to stop (new ink) stops between groups instead of after the whole
#   pass (up to ~200 ms here);
# - where torch's loader calls a compiled package (a torch without the model library's C
#   interface, `model/package_library.py`), it holds the interpreter for the whole call, so
#   a group is also how long the GUI thread may wait: with 1.6M, up to 67 ms on the longest
#   expressions; with 0.8M, 37 ms, recognition taking the same time (mean 1.00x, first 200
#   of 2014 alternating; session 32). 0.4M halved the wait again but cost 6-24% there.
RESCORE_GROUP_ARM_ELEMENTS = 800_000


def _rescoring_groups(model: HMER, memory: Tensor, items: list[_Found]) -> list[list[_Found]]:
    """`items` in order, cut into groups of rows within `RESCORE_GROUP_ARM_ELEMENTS` (padded to
    each group's longest row); every group holds at least one row."""
    arm = getattr(model.decoder, "arm", None)  # None: no ARM (or a test's stand-in decoder)
    per_position = (arm.conv.in_channels if arm is not None else 1) * memory.shape[1] * memory.shape[2]
    groups: list[list[_Found]] = []
    width = 0
    for f in items:
        row_width = len(f.ids) + 1  # <sos>/<eos> and the symbols
        grown = max(width, row_width)
        if groups and (len(groups[-1]) + 1) * grown * per_position <= RESCORE_GROUP_ARM_ELEMENTS:
            groups[-1].append(f)
            width = grown
        else:
            groups.append([f])
            width = row_width
    return groups


def _rescore(
    model: HMER, memory: Tensor, mem_mask: Tensor, vocab: Vocabulary, alpha: float, items: list[_Found],
    keep_outputs: bool = False, should_stop: ShouldStop | None = None,
) -> None:  # fmt: skip
    """Set `total` of each item: its score plus the opposite direction's. Both directions'
    items go through one decoder pass per group (each is read in the direction that did not
    find it): one pass instead of two halves the per-operator overhead. keep_outputs: also
    set the `outputs` of each r2l item, which this pass reads left to right. should_stop is
    asked before each group (`_rescoring_groups`)."""
    for group in _rescoring_groups(model, memory, items):
        stop_if_asked(should_stop)
        parts = [direction_targets([f.ids], vocab, reverse=(f.direction == "l2r")) for f in group]
        width = max(tgt.shape[1] for tgt, _ in parts)
        tgt = torch.cat([F.pad(t, (0, width - t.shape[1]), value=vocab.pad_id) for t, _ in parts]).to(memory.device)
        out = torch.cat([F.pad(o, (0, width - o.shape[1]), value=vocab.pad_id) for _, o in parts]).to(memory.device)
        image = torch.tensor([f.image for f in group], device=memory.device)
        reverse, (logits, aux, attn) = _normalized_logprob(model, memory, mem_mask, image, tgt, out, vocab, alpha,
                                                           need_attention=keep_outputs)  # fmt: skip
        for i, (f, r) in enumerate(zip(group, reverse.tolist())):
            f.total = f.score + r
            if keep_outputs and f.direction == "r2l":  # read left to right here: it explains the reading
                n = len(f.ids) + 1
                f.outputs = (logits[i, :n], aux[i, :n], attn[i, :, :n].mean(dim=0))


def _rescore_top(
    model: HMER, memory: Tensor, mem_mask: Tensor, vocab: Vocabulary, alpha: float, found: list[_Found], nbest: int,
    keep_outputs: bool = False, should_stop: ShouldStop | None = None,
) -> None:  # fmt: skip
    """Set `total` for every hypothesis that can be among the `nbest` best of its image."""
    by_key: dict[tuple[int, tuple[int, ...]], dict[str, _Found]] = {}
    for f in found:
        by_key.setdefault((f.image, f.ids), {})[f.direction] = f
    pending: list[_Found] = []
    for both in by_key.values():
        if len(both) == 2:  # each direction has scored this sequence already
            total = both["l2r"].score + both["r2l"].score
            both["l2r"].total = both["r2l"].total = total
        else:
            pending.extend(both.values())
    # The nbest-th best total known per image is a floor nothing with a lower own score can
    # beat. One pass over everything above it: measured, several small passes cost more than
    # they prune.
    known: dict[int, list[float]] = {}
    for both in by_key.values():
        f = next(iter(both.values()))
        if f.total is not None:
            known.setdefault(f.image, []).append(f.total)
    floor = {i: sorted(t, reverse=True)[nbest - 1] for i, t in known.items() if len(t) >= nbest}
    pending = [f for f in pending if f.score > floor.get(f.image, float("-inf"))]
    _rescore(model, memory, mem_mask, vocab, alpha, pending, keep_outputs, should_stop)
