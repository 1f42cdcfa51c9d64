"""Data hygiene (issue 15): audit prompt sets, SFT/preference data and tokenizers for pollution before they shape a
model — duplicates, boilerplate watermarks, spam, encoding damage, script mixing, leaks, train/eval contamination,
and spam-like or under-trained tokens. ``charter audit FILE... [--tokenizer MODEL] [--fix OUT]``.

Modules: :mod:`.load` (records with real line numbers), :mod:`.text` (scripts, shingles, MinHash),
:mod:`.checks` (the text checks), :mod:`.tokenizer`, :mod:`.fix` (cleaned copies), :mod:`.run` (the whole audit).
"""
