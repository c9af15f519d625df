"""Decoding keeps readings well formed: balanced braces, a group after each script and root."""

from __future__ import annotations

import functools
import types

import pytest
import torch

from model.beam import beam_search_memory
from model.greedy import greedy_search_memory
from model.syntax import SyntaxRules, broken_rule
from model.vocab import Vocabulary

VOCAB = Vocabulary.default()


def _scripted_model(script: list[list[str]]):
    """A decoder whose step i ranks script[i] in that order (the first highest), everything else far below."""
    steps = iter(script)

    def step(state, last, need_aux):
        ranking = next(steps)
        logits = torch.full((last.shape[0], len(VOCAB)), -20.0)
        for rank, token in enumerate(ranking):
            logits[:, VOCAB.tokens.index(token)] = 10.0 - rank
        return logits, None, torch.ones(last.shape[0], 1, 1)

    return types.SimpleNamespace(decoder=types.SimpleNamespace(start=lambda *args: None, step=step))


def _greedy(script, well_formed=True):
    model = _scripted_model(script)
    memory, mask = torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, dtype=torch.bool)
    ids, _ = greedy_search_memory(model, memory, mask, VOCAB, max_len=len(script), well_formed=well_formed)[0]
    return VOCAB.decode(ids)


def test_broken_rule_names_what_is_wrong():
    assert broken_rule("x ^ { 2 } + \\sqrt [ 3 ] { y }".split()) is None
    assert "never opened" in broken_rule("x } ^ { 2".split())
    assert "left open" in broken_rule("\\frac { 1 } { 2".split())
    assert "^ at token 2" in broken_rule("x ^ 2".split())
    assert "\\sqrt" in broken_rule("\\sqrt x".split())
    assert "\\frac at token 3 has a numerator but no denominator" in broken_rule("x + \\frac { 1 } + 2".split())
    assert broken_rule("\\frac \\theta { 2 i } + \\frac { 1 } { 2 }".split()) is None  # as 2016 writes it


def test_greedy_takes_the_best_token_that_keeps_the_reading_well_formed():
    # The decoder would close a group it never opened, write a bare exponent, and stop
    # with a group open; each time the rules take its next choice.
    script = [["x"], ["}", "^"], ["2", "{"], ["2"], ["<eos>", "}"], ["<eos>"]]
    assert _greedy(script, well_formed=False) == ["x", "}", "2", "2"]
    assert _greedy(script) == ["x", "^", "{", "2", "}"]


def test_a_root_takes_a_group_or_an_index():
    assert _greedy([["\\sqrt"], ["x", "[", "{"], ["3"], ["]"], ["{"], ["y"], ["}"], ["<eos>"]]) == \
        "\\sqrt [ 3 ] { y }".split()


def test_a_fraction_gets_its_denominator():
    # After the numerator the decoder would rather stop, or go on with `+`: the rules take
    # its next choice, the denominator's `{`; a fraction written without groups stays free.
    script = [["\\frac"], ["{"], ["1"], ["}"], ["<eos>", "+", "{"], ["2"], ["}"], ["<eos>"]]
    assert _greedy(script, well_formed=False) == ["\\frac", "{", "1", "}"]
    assert _greedy(script) == "\\frac { 1 } { 2 }".split()
    assert _greedy([["\\frac"], ["\\theta"], ["{"], ["2"], ["}"], ["<eos>"]]) == "\\frac \\theta { 2 }".split()


def test_right_to_left_a_fraction_comes_only_after_its_numerator():
    # Right to left `\frac { 1 } { 2 }` reads `} 2 { } 1 { \frac`: `\frac` may follow the `{`
    # that closes the numerator (a group begun right after another closed), not one that
    # closes a lone group, as in `x ^ { 2 }` read backwards.
    rules = SyntaxRules(VOCAB)
    frac = VOCAB.tokens.index("\\frac")

    def allowed_after(tokens: str) -> bool:
        state, ids = rules.start(torch.tensor([True])), VOCAB.encode(tokens.split())
        for t in ids:
            state = rules.advance(state, torch.tensor([t]))
        return bool(rules.mask(state, torch.tensor(ids[-1:]), torch.zeros(1, len(VOCAB)))[0, frac] > float("-inf"))

    assert allowed_after("} 2 { } 1 {")
    assert not allowed_after("} 2 {")
    assert not allowed_after("} 2 { + } 1 {")  # the numerator must follow the denominator at once
    assert allowed_after("} 2 { } } x { 1 {")  # a numerator holding a group of its own


def test_right_to_left_rows_obey_the_mirrored_rules():
    rules = SyntaxRules(VOCAB)
    ids = {t: VOCAB.tokens.index(t) for t in ["{", "}", "^", "_", "\\sqrt", "x", "[", "<sos>"]}
    # row 0 has just read `x`, row 1 `{`; both right to left with one group open (`}` was read)
    state = rules.start(torch.tensor([True, True]))
    state = rules.advance(state, torch.tensor([ids["}"], ids["}"]]))
    last = torch.tensor([ids["x"], ids["{"]])
    masked = rules.mask(state, last, torch.zeros(2, len(VOCAB)))
    allowed = masked > float("-inf")
    assert not allowed[0, ids["^"]] and allowed[1, ids["^"]]  # a script only right before its group
    assert not allowed[0, ids["\\sqrt"]] and allowed[1, ids["\\sqrt"]]
    assert allowed[0, ids["{"]] and not allowed[0, ids["<sos>"]]  # the open group must close first
    fresh = rules.start(torch.tensor([True]))
    assert rules.mask(fresh, last[:1], torch.zeros(1, len(VOCAB)))[0, ids["{"]] == float("-inf")


def _allowed_in_words(prefix: list[str], reverse: bool) -> set[str]:
    """The rules spelled out token by token: what may come next after `prefix` (in
    reading order; right-to-left rows read the caption backwards)."""
    opens, closes = ("}", "{") if reverse else ("{", "}")
    marker = "{" if reverse else "\\frac"  # a group opened right after it is marked
    groups: list[bool] = []  # the open groups, marked or not
    closed = None  # what the last token closed: None (nothing), True (a marked group), False
    for i, t in enumerate(prefix):
        closed = None
        if t == opens:
            groups.append(i > 0 and prefix[i - 1] == marker)
        elif t == closes and groups:
            closed = groups.pop()
    depth = len(groups)
    last = prefix[-1] if prefix else ("<eos>" if reverse else "<sos>")
    allowed = set()
    for t in VOCAB.tokens:
        if t == ("{" if reverse else "}") and depth == 0:
            continue  # nothing to close
        if t in ("<pad>", "<sos>", "<eos>") and depth > 0:
            continue  # a group is still open
        if reverse:  # t will stand right before `last` in the caption
            if t in ("^", "_") and last != "{" or t == "\\sqrt" and last not in ("{", "["):
                continue
            if t == "\\frac" and closed is False:  # the group after a fraction's numerator is its denominator
                continue
        elif last in ("^", "_") and t != "{" or last == "\\sqrt" and t not in ("{", "["):
            continue
        elif closed is True and t != "{":  # a fraction's numerator is followed by its denominator
            continue
        allowed.add(t)
    return allowed


def test_the_masks_are_the_rules_in_words_on_random_rows():
    # Random walks through what the masks allow, both directions, against the rules
    # written out token by token: any wrong entry of the precomputed tables shows up.
    rules = SyntaxRules(VOCAB)
    gen = torch.Generator().manual_seed(0)
    ink = ["{", "}", "^", "_", "\\sqrt", "[", "]", "x", "2", "\\frac", "<eos>", "<sos>"]
    weights = torch.ones(len(VOCAB))
    for t in ink:
        weights[VOCAB.tokens.index(t)] = 40.0  # mostly the tokens the rules are about
    rows, reverse = 64, torch.arange(64) % 2 == 1
    state = rules.start(reverse)
    last = torch.tensor([VOCAB.eos_id if r else VOCAB.sos_id for r in reverse.tolist()])
    prefixes: list[list[str]] = [[] for _ in range(rows)]
    checked = numerators = 0
    for _ in range(24):
        allowed = rules.mask(state, last, torch.zeros(rows, len(VOCAB))) > float("-inf")
        for i in range(rows):
            got = {VOCAB.tokens[j] for j in allowed[i].nonzero().flatten().tolist()}
            assert got == _allowed_in_words(prefixes[i], bool(reverse[i])), (prefixes[i], bool(reverse[i]))
            checked += 1
        pick = torch.multinomial(allowed.float() * weights, 1, generator=gen).flatten()
        for i, j in enumerate(pick.tolist()):
            prefixes[i].append(VOCAB.tokens[j])
        state, last = rules.advance(state, pick), pick
        numerators += int((state.closed == 2).sum())
    assert numerators > 0  # the walks closed marked groups (numerators), so the new rule was exercised
    assert checked == 24 * rows and any(p.count("^") for p in prefixes) and any(p.count("\\sqrt") for p in prefixes)


def test_every_beam_reading_is_well_formed_in_both_directions():
    # The same preferences at every step, for every row of both directions: a script, then
    # closing a group, stopping, opening a group; freely, every reading breaks a rule.
    preference = ["^", "}", "<eos>", "{", "x", "<sos>"]
    logits = torch.full((len(VOCAB),), -20.0)
    for rank, token in enumerate(preference):
        logits[VOCAB.tokens.index(token)] = 10.0 - rank

    class Decoder:  # incremental steps for the search, teacher forcing for the rescoring
        def start(self, *args):
            return types.SimpleNamespace(reorder=lambda index: None)

        def step(self, state, last, need_aux):
            return logits.expand(len(last), -1), None, None

        def __call__(self, memory, mem_mask, tgt, image_index):
            return logits.expand(*tgt.shape, -1), None, None

    model = types.SimpleNamespace(decoder=Decoder())
    memory, mask = torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, dtype=torch.bool)
    search = functools.partial(beam_search_memory, model, memory, mask, VOCAB, beam_size=4, max_len=12)
    free = [VOCAB.decode(h.ids) for h in search(well_formed=False)[0]]
    assert free and all(broken_rule(r) for r in free), free
    ruled = search()[0]
    assert {h.direction for h in ruled} == {"l2r", "r2l"}
    assert all(broken_rule(VOCAB.decode(h.ids)) is None for h in ruled), [" ".join(VOCAB.decode(h.ids)) for h in ruled]


@pytest.mark.crohme
def test_every_crohme_caption_keeps_the_rules(crohme_dir):
    from train.data import read_captions

    found = 0
    for split in ("train", "2014", "2016"):
        for name, tokens in read_captions(crohme_dir / "captions" / f"{split}.txt").items():
            assert broken_rule(tokens) is None, (split, name, " ".join(tokens))
            found += 1
    assert found == 8835 + 986 + 1147


@pytest.mark.crohme
def test_the_masks_let_every_crohme_caption_through_in_both_directions(crohme_dir):
    # The masks, not only `broken_rule`: every caption, read left to right and backwards,
    # is allowed token by token, and may stop at its end.
    from train.data import read_captions

    rules = SyntaxRules(VOCAB)
    rows: list[list[int]] = []
    for split in ("train", "2014", "2016"):
        for tokens in read_captions(crohme_dir / "captions" / f"{split}.txt").values():
            ids = VOCAB.encode(tokens)
            rows += [ids + [VOCAB.eos_id], ids[::-1] + [VOCAB.sos_id]]
    width = max(len(r) for r in rows)
    reverse = torch.arange(len(rows)) % 2 == 1
    state = rules.start(reverse)
    last = torch.where(reverse, VOCAB.eos_id, VOCAB.sos_id)
    for t in range(width):
        live = torch.tensor([t < len(r) for r in rows])
        nxt = torch.tensor([r[t] if t < len(r) else VOCAB.pad_id for r in rows])
        allowed = rules.mask(state, last, torch.zeros(len(rows), len(VOCAB))).gather(1, nxt[:, None])[:, 0] > float("-inf")
        blocked = (live & ~allowed).nonzero().flatten().tolist()
        assert not blocked, [(" ".join(VOCAB.decode(rows[i])), t) for i in blocked[:3]]
        state, last = rules.advance(state, nxt), nxt
