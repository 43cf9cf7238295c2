"""How editloop's own HTTP clients present a token (the LSP, the replay, evals, the remote backend).

>>> bearer("t")
{'Authorization': 'Bearer t'}
>>> bearer(None)
{}
"""


def bearer(token: str | None) -> dict[str, str]:
    """The ``Authorization`` header for ``token``; none without one."""
    return {"Authorization": f"Bearer {token}"} if token else {}
