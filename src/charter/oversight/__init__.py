"""The scalable-oversight lab: weak-to-strong generalisation, measured as performance gap recovered (PGR).

Burns et al. (2023) train a strong *student* on a weak *supervisor*'s labels and report

    PGR = (student on weak labels − weak) / (ceiling − weak),

where the *ceiling* is the same strong model trained on ground truth. The lab runs a sweep of weak supervisors ×
strong students × losses × seeds on a task and writes ``RUN/oversight/results.jsonl`` (one row per run);
the report computes PGR with a nested bootstrap interval (seeds outer, test items inner).

Modules, in the order the method runs:

* :mod:`.tasks` — the items and their train/test split (HH harmlessness pairs, XSTest, user files, synthetic);
* :mod:`.features` — frozen feature extractors (bag of words, MiniLM-L6, a causal LM's activations), cached on disk
  by content;
* :mod:`.losses` — xent, logconf, product on one logit per item;
* :mod:`.heads` — a linear head trained with one of the losses, the checkpoint chosen on a *weak*-labelled split;
* :mod:`.finetune` — the embedded SmolLM2-135M (or any causal LM folder) with a classification head, LoRA or full;
* :mod:`.models` — model specs (``bow``, ``minilm``, ``probe:…``, ``finetune:…``, ``judge:…``, ``mean(…)``,
  ``vote(…)``) and how each supervises or learns;
* :mod:`.stats` — accuracy, AUROC, PGR and its nested bootstrap;
* :mod:`.sweep` — the config, the sweep, ``results.jsonl`` and the ``oversight`` stage.
"""
