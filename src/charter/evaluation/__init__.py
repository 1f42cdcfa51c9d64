"""Evaluation: did the model get less harmful without getting evasive?

``run_eval`` answers red-team and benign prompts with every model, scores harm (0–4) and violated principles
with AI judges, classifies refusals (string match and AI judge), compares models head to head in both orders
(Elo with bootstrap intervals for harmlessness and helpfulness), and measures how far each judge can be
trusted. Modules: :mod:`.judge`, :mod:`.refusal`, :mod:`.compare`, :mod:`.elo`, :mod:`.pm`, :mod:`.stats`,
:mod:`.summary`, :mod:`.run_eval`. Heavy libraries are imported only where used.
"""
