"""Which token to read for each option of a multiple-choice score request (local backends: transformers, vLLM).

An option is scored by the log-probability of its *first* token right after the prompt, so the options must start
with different tokens: "Yes" and "Yes, but" would both be read from the token "Yes" and get the same score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from charter.errors import BackendError


def option_first_tokens(encode: Callable[[str], list[int]], text: str,
                        options: Sequence[str]) -> tuple[list[int], list[int]]:
    """The context ids and, per option, the id of its first token as it is tokenised right after ``text``.

    Tokenisers merge across the boundary (``"is: " + "A"`` becomes ``"is:" + " A"``), so the context is cut back to
    where every ``text + option`` tokenisation departs from the tokens of ``text`` alone.

    Raises:
        BackendError: an option is empty or adds no token, or two options start with the same token.
    """
    base = encode(text)
    fulls = []
    for o in options:
        if not o:
            raise BackendError("an empty option cannot be scored", "give every option at least one character")
        fulls.append(encode(text + o))
    k = len(base)
    for f in fulls:
        j = 0
        while j < min(len(f), len(base)) and f[j] == base[j]:
            j += 1
        k = min(k, j)
    if any(len(f) <= k for f in fulls):
        raise BackendError(f"an option of {list(options)} adds no token after the prompt",
                           "use options that start with a visible character, e.g. 'A' and 'B'")
    firsts = [f[k] for f in fulls]
    seen: dict[int, str] = {}
    for option, token in zip(options, firsts, strict=True):
        if token in seen:
            raise BackendError(f"options {seen[token]!r} and {option!r} start with the same token (id {token}), so "
                               "they would get the same score",
                               "use options whose first tokens differ, e.g. 'A' and 'B'")
        seen[token] = option
    return base[:k], firsts
