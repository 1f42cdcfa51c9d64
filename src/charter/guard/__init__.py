"""The constitution at run time: ``charter guard``, an OpenAI-compatible proxy that checks requests and answers
against each principle, blocks or revises, and logs every decision.

Modules: :mod:`.config` (the one config), :mod:`.scorers` (feedback-model yes/no scores, the distilled
classifier), :mod:`.policy` (thresholds, actions, failure policy, run-time revision), :mod:`.upstream` (HTTP or
in-process model), :mod:`.server` (the HTTP proxy, hold-back and windowed streaming), :mod:`.log` (SQLite),
:mod:`.distill` (training the classifier), :mod:`.calibrate` (thresholds from labelled prompts).
"""
