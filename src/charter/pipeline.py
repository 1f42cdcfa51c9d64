"""``charter run``: the stages in order over one run folder, each resumable.

Each stage reads the previous stage's files in the run folder and writes its own; model calls go through the run's
call cache. Running the same command again after a kill resumes; re-running a finished run is near-instant.
"""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from charter.backends import load_backend
from charter.config import ModelConfig, RunConfig, dump_config
from charter.records import CritiqueChain, Prompt, read_jsonl, write_jsonl
from charter.store import CachedBackend, RunDir, now_iso


class Session:
    """One run folder plus the backends loaded for it (each loaded once, shared between roles)."""

    def __init__(self, cfg: RunConfig, run: RunDir, quiet: bool = False, ray_address: str | None = None) -> None:
        self.cfg = cfg
        self.run = run
        self.quiet = quiet
        self.ray_address = ray_address
        self._backends: dict[str, CachedBackend] = {}

    def backend(self, mc: ModelConfig) -> CachedBackend:
        """The cached backend for a model role (loaded on first use)."""
        if mc.threads == 0 and self.cfg.threads:
            mc = mc.model_copy(update={"threads": self.cfg.threads})
        key = mc.model_dump_json()
        if key not in self._backends:
            self.log(f"loading {mc.model}")
            inner: Any
            if self.ray_address:
                from charter.backends.ray_pool import wrap_with_ray

                inner = wrap_with_ray(mc.model, mc.options(), self.ray_address)
            else:
                inner = load_backend(mc.model, mc.options(), lazy=True)
            # several engine batches per chunk, so the engine refills finished rows with waiting requests
            self._backends[key] = CachedBackend(inner, self.run.cache, batch_size=4 * mc.batch_size)
        return self._backends[key]

    def release(self) -> None:
        """Let go of the loaded models (closing any that hold connections or workers); the next use loads them again.

        Called before a training stage: measured on the 2-core AMX Xeon (bf16), SFT of the 135M took 7.9 s per step
        with the 1.5B feedback model still loaded in the process and 5.3 s after releasing it (4.9-5.1 in a fresh
        process). Models served by a Ray cluster are kept: they live in its workers, not here."""
        if self.ray_address:
            return
        import gc

        for b in self._backends.values():
            close = getattr(b.backend, "close", None)
            if callable(close):
                close()
        self._backends.clear()
        gc.collect()

    def log(self, text: str) -> None:
        """A progress line on stderr."""
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)


def load_run_prompts(cfg: RunConfig) -> tuple[list[Prompt], dict[str, Any]]:
    """Red-team + helpful prompts as the config asks; returns them and, per file, what was used, skipped and which
    part of the split. Prompts repeated across files (same text) are used once. Prompts of a red-team file with a
    ``triage`` threshold are marked in ``info["triage"]`` ({prompt id: threshold}) for the SL stage to sort."""
    from charter.prompts import PromptSet, default_prompts, load_prompts
    from charter.splits import Selection
    from charter.splits import describe as describe_split
    from charter.splits import select as select_split

    pc = cfg.prompts
    info: dict[str, Any] = {"triage": {}}

    def from_file(path: str, kind: str, split: Selection) -> PromptSet:
        bundled = path == "bundled"
        loaded = default_prompts(kind) if bundled else load_prompts(path, fmt=pc.format, field=pc.field,
                                                                    hh_mode=pc.hh_mode)
        if split != "all":  # the bundled sets too: `charter eval` with split=eval may evaluate on them
            where = None if bundled else path
            info[loaded.source] = {"split": describe_split(loaded.prompts, where, split)}
            loaded.prompts = select_split(loaded.prompts, split, where)
        return loaded

    prompts: list[Prompt] = []
    seen_ids: set[str] = set()
    seen_text: set[str] = set()
    for kind, limit in (("red_team", pc.red_team_limit), ("helpful", pc.helpful_limit)):
        taken = 0
        for entry in pc.files(kind):
            s = from_file(entry.path, kind, entry.split or pc.split)
            kept: list[Prompt] = []
            for p in s.prompts:
                key = " ".join(p.text.split()).casefold()
                full = (limit is not None and taken >= limit) or (entry.limit is not None and len(kept) >= entry.limit)
                if p.id in seen_ids or key in seen_text or full:
                    continue
                if kind == "helpful":
                    p.helpful = True
                elif entry.triage is not None:
                    info["triage"][p.id] = entry.triage
                seen_ids.add(p.id)
                seen_text.add(key)
                kept.append(p)
                taken += 1
            prompts += kept
            info[s.source] = {**info.get(s.source, {}), "prompts": len(kept),
                              "skipped": [list(x) for x in s.skipped], "duplicates": s.duplicates, "hash": s.hash()}
    return prompts, info


def write_jsonl_dicts(path: Path, rows: list[dict[str, Any]]) -> None:
    """Plain JSON rows, written atomically (temp file + rename)."""
    import json
    import os

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


def stage_critique(s: Session) -> dict[str, Any]:
    """SL-CAI critique/revision: writes critiques.jsonl and sft.jsonl."""
    from charter.audit.run import audit_run_inputs
    from charter.constitution import load_constitution
    from charter.stages.critique import run_critique

    cfg = s.cfg
    constitution = load_constitution(cfg.constitution)
    prompts, prompt_info = load_run_prompts(cfg)
    to_triage = prompt_info.pop("triage")
    audit_run_inputs(cfg, s.run.path, log=s.log)  # issue 15: audit.enabled → RUN/audit.json + warnings, no drops
    s.run.update_manifest(constitution={"name": constitution.name, "version": constitution.version,
                                        "hash": constitution.hash(), "path": cfg.constitution or "(bundled)"},
                          prompts=prompt_info)
    policy = s.backend(cfg.policy)
    feedback = s.backend(cfg.feedback_model())
    triaged: dict[str, Any] = {}
    if to_triage:
        from charter.stages.triage import triage

        prompts, records, triaged = triage(prompts, to_triage, feedback, s.quiet)
        write_jsonl_dicts(s.run.file("triage.jsonl"), records)
        s.log(f"[critique] triage: kept {triaged['kept']} of {triaged['triaged']} red-team prompts the feedback "
              f"model judged harmful enough (triage.jsonl)")
    chains, sft, summary = run_critique(cfg.critique, prompts, constitution, policy, feedback, s.quiet)
    if triaged:
        summary["triage"] = triaged
    write_jsonl(s.run.file("critiques.jsonl"), chains)
    write_jsonl(s.run.file("sft.jsonl"), sft)
    return summary


def stage_sft(s: Session) -> dict[str, Any]:
    """SFT on sft.jsonl: writes sft/adapter and sft/model."""
    from charter.train.sft import run_sft

    scfg = s.cfg.sft
    base = scfg.base_model or s.cfg.policy.model
    s.log(f"[sft] fine-tuning {base} on {s.run.file('sft.jsonl')}")
    return run_sft(scfg, s.run.file("sft.jsonl"), s.run.file(scfg.output), base)


def _trained(s: Session, folder: str) -> Path | None:
    """``RUN/FOLDER/model`` when a charter trainer finished saving it (a half-written folder does not count)."""
    from charter.train.common import is_complete

    path = s.run.file(folder) / "model"
    return path if is_complete(path) else None


def sl_model(s: Session) -> str:
    """The SL-CAI model (RUN/sft/model) when the SFT stage made it, else the policy."""
    folder = _trained(s, s.cfg.sft.output)
    return f"transformers/{folder.resolve()}" if folder else s.cfg.policy.model


def _role(s: Session, spec: str) -> CachedBackend:
    return s.backend(s.cfg.policy.model_copy(update={"model": spec}))


def sl_prompts(s: Session) -> list[Prompt]:
    """The prompts the SL stage used (after triage), from critiques.jsonl; the config's prompts when it did not run."""
    path = s.run.file("critiques.jsonl")
    if path.is_file():
        return [c.prompt for c in read_jsonl(path, CritiqueChain)]
    return load_run_prompts(s.cfg)[0]


def stage_sample(s: Session) -> dict[str, Any]:
    """K answers per prompt from the SL-CAI model (the SL stage's prompts): samples.jsonl, pairs.jsonl."""
    from charter.stages.sample import sample_stage

    prompts = sl_prompts(s)
    return sample_stage(s.cfg.sample, s.run, prompts, _role(s, sl_model(s)), s.quiet)


def stage_label(s: Session) -> dict[str, Any]:
    """AI preference labels from the feedback model: labels.jsonl, preferences.jsonl."""
    from charter.constitution import load_constitution
    from charter.stages.label import run_label

    constitution = load_constitution(s.cfg.constitution)
    constitution.require_comparison()
    summary = run_label(s.cfg.label, s.run, s.run.file("pairs.jsonl"), constitution,
                        s.backend(s.cfg.feedback_model()), s.quiet)
    for warning in summary.get("warnings", []):
        s.log(f"[label] WARNING: {warning}")
    return summary


def stage_rlcd(s: Session) -> dict[str, Any]:
    """Contrastive pairs labelled by construction: rlcd_samples.jsonl, rlcd_preferences.jsonl."""
    from charter.constitution import load_constitution
    from charter.stages.rlcd import rlcd_stage

    prompts = sl_prompts(s)
    return rlcd_stage(s.cfg.rlcd, s.run, prompts, load_constitution(s.cfg.constitution),
                      _role(s, sl_model(s)), s.quiet)


def _preferences(s: Session, chosen: str | None) -> Path:
    """The preference file a trainer reads: its ``preferences`` setting, else the judge labels (preferences.jsonl)
    when the label stage ran, else the RLCD pairs (rlcd_preferences.jsonl)."""
    from charter.errors import ConfigError

    if chosen:
        return Path(chosen)
    for name in ("preferences.jsonl", "rlcd_preferences.jsonl"):
        if s.run.file(name).is_file():
            return s.run.file(name)
    raise ConfigError(f"{s.run.file('preferences.jsonl')}: file not found (nor rlcd_preferences.jsonl)",
                      "run the label (or rlcd) stage first, or set dpo.preferences / rm.preferences to a file")


def stage_dpo(s: Session) -> dict[str, Any]:
    """DPO from the SL-CAI model on the preferences: dpo/model."""
    from charter.train.dpo import run_dpo

    cfg = s.cfg.dpo
    path = _preferences(s, cfg.preferences)
    s.log(f"[dpo] training on {path}")
    return run_dpo(cfg, path, s.run.file(cfg.output), cfg.base_model or sl_model(s))


def stage_rm(s: Session) -> dict[str, Any]:
    """A reward model on the preferences: rm/model."""
    from charter.train.reward import run_reward

    cfg = s.cfg.rm
    path = _preferences(s, cfg.preferences)
    s.log(f"[rm] training on {path}")
    return run_reward(cfg, path, s.run.file(cfg.output), cfg.base_model or sl_model(s))


def stage_online(s: Session) -> dict[str, Any]:
    """GRPO from the SL-CAI model with the reward model (or the feedback model) as reward: online/model."""
    from charter.train.online import train_online

    cfg = s.cfg.online
    prompts, _ = load_run_prompts(s.cfg)
    # the feedback reward's readings go through the run's call cache, like the label stage's
    feedback = s.backend(s.cfg.feedback_model()) if cfg.reward == "feedback" else None
    rm = Path(cfg.reward_model) if cfg.reward_model else _trained(s, s.cfg.rm.output)
    return train_online(cfg, prompts, s.run.file(cfg.output), cfg.base_model or sl_model(s), rm, feedback)


def trained_models(s: Session) -> dict[str, str]:
    """base, then whichever of the SL-CAI / RL-CAI models this run made (complete ones only)."""
    models = {"base": s.cfg.policy.model}
    for name, folder in (("sl", s.cfg.sft.output), ("rl-dpo", s.cfg.dpo.output), ("rl-online", s.cfg.online.output)):
        if (path := _trained(s, folder)) is not None:
            models[name] = f"transformers/{path.resolve()}"
    return models


def stage_eval(s: Session) -> dict[str, Any]:
    """Base vs the trained models: harm, refusals, Elo; eval/summary.json."""
    from charter.evaluation.run_eval import run_eval

    models = trained_models(s)
    summary = run_eval(s.cfg.eval, s.run, models, s.quiet)
    return {"models": list(models), "judges": s.cfg.eval.judges, "summary": str(s.run.file("eval/summary.json")),
            "failures": len(summary.get("failures", []))}


def stage_oversight(s: Session) -> dict[str, Any]:
    """The scalable-oversight lab: a weak-to-strong sweep, oversight/results.jsonl."""
    from charter.oversight.sweep import stage_oversight as run

    return run(s)


def stage_report(s: Session) -> dict[str, Any]:
    """The self-contained HTML report: report.html."""
    from charter.report.report import build_report

    return {"report": str(build_report(s.run.path))}


TRAINERS = ("sft", "dpo", "rm", "online")
"""Stages that train a model (and skip training when their inputs are unchanged)."""

STAGE_FUNCS: dict[str, Callable[[Session], dict[str, Any]]] = {
    "critique": stage_critique, "sft": stage_sft, "sample": stage_sample, "label": stage_label, "rlcd": stage_rlcd,
    "dpo": stage_dpo, "rm": stage_rm, "online": stage_online, "eval": stage_eval, "oversight": stage_oversight,
    "report": stage_report,
}


def check_models(cfg: RunConfig) -> None:
    """Fail fast, before any work, on a malformed model string or a local model that is not there (a folder without
    config.json, an optional model not installed: each with its own one-line fix)."""
    from charter.backends import split_spec
    from charter.backends.transformers import resolve_folder
    from charter.errors import BackendError

    for role, mc in (("policy", cfg.policy), ("feedback", cfg.feedback_model())):
        provider, rest = split_spec(mc.model)
        if provider == "transformers" and rest != "embedded":
            try:
                resolve_folder(rest)
            except BackendError as e:
                raise BackendError(f"{role} model: {e.problem}", e.fix) from None


def run_pipeline(cfg: RunConfig, stages: list[str] | None = None, quiet: bool = False,
                 ray_address: str | None = None) -> RunDir:
    """Run ``stages`` (default: the config's) over the config's run folder; returns the run folder."""
    check_models(cfg)
    run = RunDir(cfg.run_dir())
    dump_config(cfg, run.file("config.yaml"))
    run.update_manifest(name=cfg.name, seed=cfg.seed, policy=cfg.policy.model,
                        feedback=cfg.feedback_model().model)
    session = Session(cfg, run, quiet, ray_address)
    for name in stages or cfg.stages:
        start = time.monotonic()
        started = now_iso()
        hits, misses = run.cache.hits, run.cache.misses
        session.log(f"== stage {name} ==")
        if name in TRAINERS:
            session.release()  # training runs in this process: the models loaded for earlier stages only slow it
        summary = STAGE_FUNCS[name](session)
        summary["seconds"] = round(time.monotonic() - start, 1)
        summary["model_calls"] = {"made": run.cache.misses - misses, "from_cache": run.cache.hits - hits}
        if name in TRAINERS:
            summary["trained"] = "skipped" not in summary
            session.log(f"[{name}] " + ("retrained: its inputs changed or it had no complete model" if
                                        summary["trained"] else "up to date: trained from the same inputs, kept"))
        run.update_manifest(stages={name: {"started": started, "finished": now_iso(), **summary}})
        session.log(f"[{name}] done in {summary['seconds']}s: " + ", ".join(
            f"{k}={v}" for k, v in summary.items() if not isinstance(v, dict | list) and k != "seconds"))
    run.update_manifest(finished=now_iso(), cache_calls=run.cache.count())
    return run


def format_transcripts(run: RunDir, n: int = 3, width: int = 100) -> str:
    """A few critique chains as readable text (prompt → answer → critique → revision), accepted ones first."""
    path = run.file("critiques.jsonl")
    if not path.exists():
        return ""
    chains = [c for c in read_jsonl(path, CritiqueChain) if not c.prompt.helpful]
    chains.sort(key=lambda c: not c.accepted)
    out = []

    def block(label: str, text: str) -> str:
        body = textwrap.fill(" ".join(text.split()) or "(empty)", width=width, initial_indent="    ",
                             subsequent_indent="    ", max_lines=8, placeholder=" …")
        return f"  {label}\n{body}"

    for c in chains[:n]:
        out.append(f"--- {c.prompt.id} ({c.prompt.category or 'prompt'}; {c.reason}) ---")
        out.append(block("PROMPT", c.prompt.text))
        for st in c.steps:
            tag = st.kind.upper() + (f" [{st.principle_id}]" if st.principle_id else "")
            tag += "" if st.status == "ok" else f" — rejected: {st.status}"
            out.append(block(tag, st.text))
    return "\n".join(out)


def describe_run(run: RunDir) -> str:
    """Where the run is and what it holds."""
    lines = [f"run folder: {Path(run.path).resolve()}"]
    for name in ("config.yaml", "manifest.json", "critiques.jsonl", "sft.jsonl", "sft/model", "pairs.jsonl",
                 "preferences.jsonl", "rlcd_preferences.jsonl", "dpo/model", "rm/model", "online/model",
                 "eval/summary.json", "report.html"):
        if run.file(name).exists():
            lines.append(f"  {name}")
    return "\n".join(lines)
