"""``editloop lsp``: inline completions in editors, and what users do with them, as feedback.

``document`` (buffers, UTF-16 positions, edits) and ``tracking`` (what became of each shown
completion) are pure; ``session`` applies the latency rules and reports events; ``completer`` and
``sinks`` are the two seams (engine in-process or a server; feedback log or ``POST /feedback``);
``server`` is the thin pygls layer.
"""
