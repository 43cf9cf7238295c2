"""Identifier tokens: what similarity and definition lookups compare."""

import re

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Words every file of a language has: they say nothing about which chunk is similar.
_COMMON_WORDS = (
    "self cls def class return if else elif for while in is not and or None True False import from as "
    "with try except finally raise pass break continue lambda yield async await fn let mut pub use impl "
    "struct enum match const static var function new this null true false int str bool void public "
    "private protected package func type interface string"
)
COMMON = frozenset(_COMMON_WORDS.split())


def identifiers(text: str) -> list[str]:
    """Identifiers of two or more characters that are not a language's common words.

    >>> identifiers("def parse_header(self, raw): return raw.split(b':')")
    ['parse_header', 'raw', 'raw', 'split']
    """
    return [t for t in IDENTIFIER.findall(text) if len(t) > 1 and t not in COMMON]
