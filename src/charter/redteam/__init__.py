"""``charter redteam``: red-team prompts written per principle from the constitution (:mod:`.generate`), attacks on
any target with ASR next to benign refusal rates (:mod:`.attack`), and the failures fed back to ``charter run``
(:mod:`.run`)."""
