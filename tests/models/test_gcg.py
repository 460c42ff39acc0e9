"""Parsing grounded answers: phrases pair with the [SEG] after them; malformed parts are reported."""

from __future__ import annotations

from segprune.models.gcg import parse_grounded

SEG, OPEN, CLOSE = 4, 5, 6
A, B, C = 10, 11, 12  # ordinary words


def parse(tokens):
    return parse_grounded(tokens, SEG, OPEN, CLOSE)


def test_well_formed_answer_pairs_each_phrase_with_its_seg():
    # "<p> A B </p> [SEG] C <p> C </p> [SEG]"
    tokens = [OPEN, A, B, CLOSE, SEG, C, OPEN, C, CLOSE, SEG]
    parsed = parse(tokens)
    assert parsed.segs == [4, 9]
    assert parsed.spans == [(1, 3), (7, 8)]
    assert parsed.errors == []


def test_text_between_phrase_and_seg_is_allowed():
    parsed = parse([OPEN, A, CLOSE, B, C, SEG])
    assert parsed.spans == [(1, 2)]
    assert parsed.errors == []


def test_answer_without_grounding_has_no_segs():
    parsed = parse([A, B, C])
    assert (parsed.segs, parsed.spans, parsed.errors) == ([], [], [])


def test_seg_without_phrase_gets_none():
    parsed = parse([A, SEG, OPEN, B, CLOSE, SEG])
    assert parsed.segs == [1, 5]
    assert parsed.spans == [None, (3, 4)]
    assert parsed.errors == ["[SEG] at token 1 has no phrase"]


def test_seg_inside_an_open_phrase():
    parsed = parse([OPEN, A, SEG, C])
    assert parsed.segs == [2]
    assert parsed.spans == [None]
    assert parsed.errors == ["[SEG] at token 2 is inside the <p> opened at token 0"]


def test_unclosed_phrase_at_the_end():
    parsed = parse([OPEN, A, SEG, OPEN, B])
    assert parsed.spans == [None]
    assert parsed.errors[-1] == "<p> at token 3 is never closed"


def test_phrase_without_seg_is_dropped():
    parsed = parse([OPEN, A, CLOSE, B, OPEN, C, CLOSE, SEG, OPEN, B, CLOSE])
    assert parsed.segs == [7]
    assert parsed.spans == [(5, 6)]
    assert parsed.errors == [
        "phrase at tokens 1-2 has no [SEG] (a new <p> starts at token 4)",
        "phrase at tokens 9-10 has no [SEG] (the answer ends)",
    ]


def test_nested_open_and_stray_close():
    parsed = parse([OPEN, A, OPEN, B, CLOSE, SEG, CLOSE])
    assert parsed.spans == [(3, 4)]
    assert parsed.errors == [
        "<p> at token 0 is not closed before the <p> at token 2",
        "</p> at token 6 closes no <p>",
    ]


def test_two_closed_phrases_before_one_seg_keep_the_last():
    parsed = parse([OPEN, A, CLOSE, OPEN, B, CLOSE, SEG])
    assert parsed.spans == [(4, 5)]
    assert parsed.errors == ["phrase at tokens 1-2 has no [SEG] (a new <p> starts at token 3)"]
