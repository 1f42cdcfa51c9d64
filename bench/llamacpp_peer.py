"""llama.cpp as a peer for the benches, through llama-cpp-python (the ``llamacpp`` extra; a bench/test-only build).

* :class:`LlamaServer`: ``python -m llama_cpp.server`` on 127.0.0.1 serving a GGUF (OpenAI-compatible), started and
  stopped by the bench.
* :func:`write_f16_gguf`: an F16 GGUF written from the weights of another GGUF (the embedded Q4_1 one),
  de-quantised with the ``gguf`` package: the same numbers the engine runs, in the engine's precision class.
* :class:`LlamaCppGreedy`: greedy decoding of many prompts with llama.cpp's own batch API (``llama_batch`` with
  one sequence id per slot, all live sequences decoded in one ``llama_decode`` per step, continuous batching,
  the shared prompt prefix computed once and copied to each sequence with ``llama_memory_seq_cp`` — what
  llama.cpp's ``parallel`` example does). ``slots=1`` gives its batch-1 figure on the same prompts.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1 (``--model_alias smollm``)."""

    def __init__(self, gguf: Path, threads: int = 1, n_ctx: int = 4096, alias: str = "smollm", port: int = 0) -> None:
        self.gguf, self.threads, self.n_ctx, self.alias = gguf, threads, n_ctx, alias
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> LlamaServer:
        import httpx

        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--host", "127.0.0.1",
               "--port", str(self.port), "--model_alias", self.alias, "--n_threads", str(self.threads),
               "--n_threads_batch", str(self.threads), "--n_ctx", str(self.n_ctx), "--verbose", "false"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read() if self.proc.stderr else b"").decode(errors="replace")
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}: {err[-2000:]}")
            try:
                if httpx.get(self.url + "/models", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.close()
        raise RuntimeError(f"llama_cpp.server did not answer on {self.url} within {timeout:g} s")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def write_f16_gguf(src: Path, dst: Path) -> Path:
    """Write ``dst``: ``src`` with every quantised tensor de-quantised and stored as F16 (F32 ones kept), and the
    same metadata (``general.file_type`` = MOSTLY_F16). Skipped when ``dst`` is newer than ``src``."""
    import gguf
    import numpy as np

    if dst.is_file() and dst.stat().st_mtime > src.stat().st_mtime:
        return dst
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    tmp = dst.with_suffix(".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch=str(arch))
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(gguf.LlamaFileType.MOSTLY_F16)
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    for t in reader.tensors:
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            data = np.asarray(t.data)
        else:
            data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float16)
        shape = tuple(int(d) for d in reversed(t.shape))
        writer.add_tensor(t.name, np.ascontiguousarray(data.reshape(shape)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, dst)
    return dst


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    if not rows:
        return 0
    first, n = rows[0], min(len(r) for r in rows)
    for r in rows[1:]:
        k = 0
        while k < n and r[k] == first[k]:
            k += 1
        n = k
    return n


class LlamaCppGreedy:
    """Greedy decoding with llama.cpp's batch API over ``slots`` sequences (see the module docstring).

    Args:
        gguf: The model file.
        threads: llama.cpp threads (decode and batch).
        slots: Sequences decoded together.
        n_ctx: KV cells (all sequences together); sized by :meth:`run` when 0.
        unified: One KV buffer for all sequences (``kv_unified``; a shared prefix is then stored once) or one
            stream per sequence (attention over each sequence's own cells only).
        n_batch: Most tokens in one ``llama_decode``.
    """

    def __init__(self, gguf: Path, threads: int, slots: int, eos_ids: Sequence[int], unified: bool = False,
                 n_batch: int = 2048) -> None:
        import llama_cpp as L

        self.L, self.gguf, self.threads, self.slots = L, gguf, threads, max(1, slots)
        self.unified, self.n_batch = unified, n_batch
        self.eos = set(int(i) for i in eos_ids)
        L.llama_backend_init()
        self._quiet = L.llama_log_callback(lambda level, text, data: None)  # kept referenced
        L.llama_log_set(self._quiet, ctypes.c_void_p(0))
        mp = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(str(gguf).encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp cannot load {gguf}")
        self.n_vocab = int(L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model)))
        self.ctx: Any = None
        self.n_ctx = 0
        self.stats = {"prefill_tokens": 0, "decode_calls": 0}

    def _context(self, n_ctx: int) -> None:
        L = self.L
        if self.ctx is not None and n_ctx <= self.n_ctx:
            L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
            return
        if self.ctx is not None:
            L.llama_free(self.ctx)
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = self.n_batch
        cp.n_ubatch = min(512, self.n_batch)
        cp.n_seq_max = self.slots + 1  # + the holder of the shared prefix
        cp.n_threads = cp.n_threads_batch = self.threads
        cp.kv_unified = self.unified
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp cannot make a context of {n_ctx} cells")
        self.n_ctx = n_ctx

    def close(self) -> None:
        if self.ctx is not None:
            self.L.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            self.L.llama_model_free(self.model)
            self.model = None

    def run(self, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int]) -> list[list[int]]:
        """New tokens per prompt (greedy, without the end-of-turn token), in prompt order."""
        import numpy as np

        L = self.L
        if not prompts:
            return []
        P = max(0, min(common_prefix(prompts), min(len(p) for p in prompts) - 1))
        S = min(self.slots, len(prompts))
        longest = max(len(p) - P + m for p, m in zip(prompts, max_new_tokens, strict=True))
        per_seq = longest + 8
        # unified: the prefix once + every live sequence's own cells; split: each stream holds its own copy
        n_ctx = (P + S * per_seq) if self.unified else (self.slots + 1) * (P + per_seq)
        self._context(n_ctx + 256)
        mem = L.llama_get_memory(self.ctx)
        holder = self.slots
        batch = L.llama_batch_init(self.n_batch, 0, 1)
        try:
            def add(tok: int, pos: int, seq: int, logits: bool) -> None:
                i = batch.n_tokens
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
                batch.seq_id[i][0], batch.logits[i] = seq, logits
                batch.n_tokens = i + 1

            def decode() -> None:
                rc = L.llama_decode(self.ctx, batch)
                self.stats["decode_calls"] += 1
                if rc != 0:
                    raise RuntimeError(f"llama_decode failed ({rc}): the context is too small")

            for start in range(0, P, self.n_batch):  # the shared prefix, once
                batch.n_tokens = 0
                for j in range(start, min(P, start + self.n_batch)):
                    add(prompts[0][j], j, holder, j == P - 1)
                decode()
            self.stats["prefill_tokens"] += P
            out: list[list[int]] = [[] for _ in prompts]
            waiting = list(range(len(prompts)))[::-1]
            free = list(range(S))[::-1]
            live: dict[int, list[int]] = {}  # slot -> [prompt index, next position, last token]
            while waiting or live:
                batch.n_tokens = 0
                order: list[int] = []  # slot of each output row
                for slot, (_, pos, last) in live.items():
                    add(last, pos, slot, True)
                    order.append(slot)
                while waiting and free and batch.n_tokens + len(prompts[waiting[-1]]) - P <= self.n_batch:
                    i, slot = waiting.pop(), free.pop()
                    L.llama_memory_seq_rm(mem, slot, -1, -1)
                    if P:
                        L.llama_memory_seq_cp(mem, holder, slot, -1, -1)
                    suffix = prompts[i][P:]
                    for j, tok in enumerate(suffix):
                        add(tok, P + j, slot, j == len(suffix) - 1)
                    self.stats["prefill_tokens"] += len(suffix)
                    live[slot] = [i, len(prompts[i]), -1]
                    order.append(slot)
                if batch.n_tokens == 0:  # a prompt longer than n_batch
                    raise RuntimeError("a prompt suffix is longer than n_batch")
                decode()
                logits = np.ctypeslib.as_array(L.llama_get_logits(self.ctx), shape=(len(order), self.n_vocab))
                picks = logits.argmax(axis=1).tolist()
                for slot, tok in zip(order, picks, strict=True):
                    state = live[slot]
                    i = state[0]
                    if state[2] >= 0:
                        state[1] += 1
                    if tok in self.eos:
                        done = True
                    else:
                        out[i].append(tok)
                        done = len(out[i]) >= max_new_tokens[i]
                    state[2] = tok
                    if done:
                        del live[slot]
                        L.llama_memory_seq_rm(mem, slot, -1, -1)
                        free.append(slot)
            return out
        finally:
            L.llama_batch_free(batch)
