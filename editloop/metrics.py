"""How editloop compares a completion with the text that belonged there: one definition for all.

Rewards, the gate, every eval, the replay and the LSP's retention tracking score text with these,
so the gate judges a checkpoint by the measure it was trained on and the figures of different
commands can be compared.

Texts are compared after :func:`normalize`: line ends, trailing blanks on a line and trailing blank
lines are invisible in an editor and no user would count them against a suggestion. Leading
whitespace counts: a wrongly indented line is a wrong line in Python.

>>> edit_similarity("a + b", "a + c")
0.8
>>> exact_match("x = 1  \\r\\n", "x = 1")
True
>>> line_match("a\\nb\\nz", "a\\nb\\nc")
0.6666666666666666
"""

from rapidfuzz.distance import Levenshtein


def normalize(text: str) -> str:
    """CRLF → LF, no trailing blanks on any line, no trailing blank lines."""
    lines = text.replace("\r\n", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).rstrip("\n")


def exact_match(candidate: str, reference: str) -> bool:
    return normalize(candidate) == normalize(reference)


def edit_similarity(candidate: str, reference: str) -> float:
    """1 − normalised Levenshtein distance, in [0, 1]; two empty texts are identical."""
    return float(Levenshtein.normalized_similarity(normalize(candidate), normalize(reference)))


def line_match(candidate: str, reference: str) -> float:
    """Leading lines equal to the reference's, over the longer of the two line counts.

    What a user keeps line by line: a right first line then a wrong one is worth half of two.
    """
    got, want = normalize(candidate).split("\n"), normalize(reference).split("\n")
    same = 0
    for a, b in zip(got, want, strict=False):
        if a != b:
            break
        same += 1
    return same / max(len(got), len(want))
