"""A fast CPU decoding engine for Llama-family (SmolLM2, Llama, TinyLlama...) and Qwen2-family (Qwen2, Qwen2.5,
Qwen2.5-Coder) models, behind the transformers backend. The two share one decoder layout (RMSNorm, RoPE, GQA, SiLU
MLP); Qwen2 adds biases on the q/k/v projections, which the fused QKV projection carries.

What makes it faster than ``model.generate`` on a batch:

* **Shared-prefix KV cache.** The longest token prefix common to every prompt of a call (system prompt, few-shot
  examples) is run through the model once; every sequence attends to that single copy (one GEMM per layer for all
  rows) instead of recomputing and storing it per row. The prefix is kept between calls, so the next chunk of the
  same stage reuses it.
* **Continuous batching.** A fixed number of slots decode together; a finished sequence leaves at once (the last
  row moves into its slot, so the active rows stay one contiguous block of the cache) and a waiting prompt takes its
  place. No compute on padding or on finished rows, no tail of nearly-empty batches.
* **Few ops per token.** Fused QKV and gate/up projections, RoPE tables computed once, a preallocated cache written
  in place, attention only over the longest live sequence, and Python work per step only for bookkeeping.

Sampling uses one ``torch.Generator`` per request seeded from its ``GenParams.seed``, so a sampled answer depends
only on its own request, not on which other requests shared the batch. Greedy outputs match
``model.generate`` in the same dtype up to floating-point summation order (bench/generate.py measures how often).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import charter.backends.decode_kernel as decode_kernel
from charter.backends.base import GenParams
from charter.backends.sampling import draw, generator_for

_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
"""PyTorch's fused CPU attention that also returns log-sum-exps (torch >= 2.3); a plain-matmul path otherwise."""

PREFILL_TOKENS = 2048
"""Prompt tokens run through the model in one prefill pass: the waiting prompts that fit go through each layer's
projections and MLP as one matrix (one GEMM per weight instead of one per prompt, one Python step per layer)."""

LINEAR_MODES = ("auto", "dense", "onednn")
"""How the engine's projections multiply: ``dense`` is ``F.linear``; ``onednn`` is the same product on weights
pre-packed once for oneDNN (same dtype, another summation order; in fp32 1.1-2x faster per matmul on the AVX2 CPU
this was built on, most on the 49k-row output head at small batches; in bf16 on CPUs with native bf16, see
:func:`resolve_linear`).

Not offered: int8 weights. fbgemm's dynamic int8 linear is ~2x faster again here, but it quantises activations per
*tensor*, so a row's answer would depend on which other rows share its batch (measured: 0 of 6 greedy answers equal
to ``generate`` on the same int8 model), which breaks the call cache's promise that a request has one answer."""


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), as ``transformers.auto_dtype`` decides."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def resolve_linear(mode: str, dtype: torch.dtype) -> str:
    """The linear mode ``mode`` means for weights of ``dtype`` ("auto": onednn in fp32 when available, and in bf16
    on CPUs with native bf16 matmuls).

    bf16 packed for oneDNN, measured 2026-12-01 on the 2-core AVX512-BF16 EPYC (contended, 1 thread;
    bench/results-feedback-model.txt): the engine on Qwen2.5-Coder-1.5B decoded 23.3/25.0 tok/s against 14.1/19.0
    dense (two alternating rounds, 18 prompts x 32 tokens), every answer token-for-token the same; in
    bench/feedback_model.py (24 prompts x 96 tokens) 23.9 tok/s packed, 14.9 dense, plain generate 14.2-16.8. The
    packed copy is held beside the model's own weights (which the plain paths use): the 1.5B's RSS after loading is
    6.5 GB instead of 3.9 GB; ``extra: {linear: dense}`` saves that."""
    if mode not in LINEAR_MODES:
        raise ValueError(f"unknown linear mode {mode!r}; use one of {', '.join(LINEAR_MODES)}")
    packs = hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()
    if dtype == torch.bfloat16:
        packs = packs and native_bf16()  # emulated bf16 (AVX2-only CPUs) is not worth packing
    elif dtype != torch.float32:
        packs = False
    if mode == "auto":
        return "onednn" if packs else "dense"
    if mode == "onednn" and not packs:
        return "dense"
    return mode


def make_linear(
    w: torch.Tensor, mode: str, b: torch.Tensor | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> x @ w.T (+ b)`` for a 2-D ``x``, with ``w`` prepared for ``mode`` once."""
    if mode == "onednn":
        packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
        return lambda x: torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, b, "none", [], "")
    return lambda x: F.linear(x, w, b)


MODEL_TYPES = ("llama", "qwen2")
"""Architectures the engine runs: Llama (optional attention/MLP biases) and Qwen2 (q/k/v biases, tied or untied
embeddings, its own RoPE theta and RMSNorm eps, GQA; all read from the model, not assumed)."""


def supports(config: Any) -> str | None:
    """Why the engine cannot run a model with this config, or None when it can."""
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_TYPES:
        return f"model_type {model_type!r} is not one of {', '.join(MODEL_TYPES)}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} is not silu"
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        return "sliding-window attention layers are not implemented"
    return None


def _fused(mods: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weights of ``nn.Linear`` modules stacked into one projection, and their biases (None when none has one;
    zeros stand in for a missing one when the others have them)."""
    if len(mods) == 1:
        w, b = mods[0].weight.detach(), mods[0].bias
        return w, None if b is None else b.detach()
    w = torch.cat([m.weight.detach() for m in mods]).contiguous()
    if all(m.bias is None for m in mods):
        return w, None
    b = torch.cat([m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.weight.shape[0]) for m in mods])
    return w, b


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by every row."""
    if not rows:
        return 0
    first, n = rows[0], min(len(r) for r in rows)
    for r in rows[1:]:
        k = 0
        while k < n and r[k] == first[k]:
            k += 1
        n = k
    return n


def _chunks(suffixes: list[list[int]], budget: int) -> list[list[list[int]]]:
    """``suffixes`` in order, cut into runs of at most ``budget`` tokens (a longer one alone)."""
    out: list[list[list[int]]] = []
    size = 0
    for ids in suffixes:
        if not out or size + len(ids) > budget:
            out.append([])
            size = 0
        out[-1].append(ids)
        size += len(ids)
    return out


@dataclass
class _Row:
    """Bookkeeping of one request while it decodes."""

    index: int
    params: GenParams
    tokens: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None


class Engine:
    """Decodes many prompts at once with a shared-prefix KV cache and continuous batching.

    Args:
        model: A ``LlamaForCausalLM`` or ``Qwen2ForCausalLM`` (any dtype); its weights are shared, not copied (QKV
            and gate/up are fused into new tensors).
        eos_ids: Token ids that end a sequence.
        slots: Sequences decoded together (the batch size of each step).
        decode: ``decode(token_ids) -> str``, used to watch for stop strings.
        cache_gb: Upper bound on the per-call KV cache; fewer slots are used when long prompts would exceed it.
        kernel: Use the C decode-attention kernel (:mod:`charter.backends.decode_kernel`) when it builds (fp32).
        linear: How the projections multiply (see :data:`LINEAR_MODES`); "auto" is "onednn" in fp32 when PyTorch
            has it, else "dense".
    """

    def __init__(
        self,
        model: Any,
        eos_ids: Sequence[int],
        slots: int = 64,
        decode: Callable[[list[int]], str] | None = None,
        cache_gb: float = 2.0,
        kernel: bool = True,
        linear: str = "auto",
    ) -> None:
        cfg = model.config
        why = supports(cfg)
        if why:  # the backend asks supports() first and takes the plain generate path instead
            raise ValueError(f"the engine cannot run this model: {why}")
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = cfg.rms_norm_eps
        self.context = cfg.max_position_embeddings
        self.eos = set(int(i) for i in eos_ids)
        self.slots = max(1, slots)
        self.cache_bytes = int(cache_gb * 2**30)
        self.decode = decode
        inner = model.model
        self.dtype = inner.embed_tokens.weight.dtype
        self.kernel = decode_kernel.load() if kernel and self.dtype == torch.float32 else None
        self.linear = resolve_linear(linear, self.dtype)

        def lin(*mods: Any) -> Callable[[torch.Tensor], torch.Tensor]:
            w, b = _fused(mods)
            return make_linear(w, self.linear, b)

        self.embed = inner.embed_tokens.weight.detach()
        self.norm = inner.norm.weight.detach()
        self.lm_head = lin(model.lm_head)  # tied or not: whatever weight the model's head holds
        self.head_weight = model.lm_head.weight.detach()
        self.head_bias = None if model.lm_head.bias is None else model.lm_head.bias.detach()
        self.layers = []
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append(
                (
                    layer.input_layernorm.weight.detach(),
                    lin(a.q_proj, a.k_proj, a.v_proj),  # Qwen2: with q/k/v biases
                    lin(a.o_proj),
                    layer.post_attention_layernorm.weight.detach(),
                    lin(m.gate_proj, m.up_proj),
                    lin(m.down_proj),
                )
            )
        with torch.no_grad():
            pos = torch.arange(self.context)[None]
            cos, sin = inner.rotary_emb(self.embed[:1][None], pos)
        self.cos, self.sin = cos[0].to(self.dtype), sin[0].to(self.dtype)
        self.scale = self.head_dim**-0.5
        self._prefix_ids: tuple[int, ...] = ()
        self._prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.stats = {"prefix_tokens": 0, "prefix_reused": 0, "prefill_tokens": 0, "decode_steps": 0}

    # ------------------------------------------------------------------ pieces
    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return w * h.to(x.dtype)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """RoPE as transformers applies it (``x * cos + rotate_half(x) * sin``); cos/sin are ``[n, 1, head_dim]``."""
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _mlp(self, x: torch.Tensor, w: tuple[Any, ...]) -> torch.Tensor:
        _, _, _, ln2, gate_up, down = w
        g, u = gate_up(self._rms(x, ln2)).chunk(2, dim=-1)
        return x + down(F.silu(g) * u)

    def _split_qkv(self, h: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project ``h`` ``[n, D]`` at positions ``pos`` to RoPE'd q ``[n, H, d]``, k and v ``[n, G, d]``."""
        n, H, G, d = h.shape[0], self.n_heads, self.n_kv, self.head_dim
        qk, v = h[:, : (H + G) * d].view(n, H + G, d), h[:, (H + G) * d :].view(n, G, d)
        qk = self._rope(qk, self.cos[pos][:, None], self.sin[pos][:, None])
        return qk[:, :H], qk[:, H:], v

    # ----------------------------------------------------------------- prefill
    def _prefill(
        self,
        ids: Sequence[int],
        start: int,
        store: tuple[list[torch.Tensor], list[torch.Tensor], int] | None,
        collect: bool = True,
        hidden: bool = False,
    ) -> tuple[torch.Tensor, list]:
        """Run ``ids`` (positions ``start``...) over the shared prefix KV (if ``start``) and causally over themselves.

        Writes their K/V into slot ``store[2]`` of the caches ``store[:2]``, or returns them when ``store`` is None
        and ``collect``. Returns the logits of the last token (its final hidden state ``[1, D]``, before the norm,
        when ``hidden``) and the per-layer ``(K, V)`` of ``ids`` (``[G, n, d]``).
        """
        n = len(ids)
        x = self.embed[torch.tensor(list(ids))]
        pos = torch.arange(start, start + n)
        mask = None
        if start:
            mask = torch.ones(n, start + n, dtype=torch.bool)
            mask[:, start:] = torch.ones(n, n, dtype=torch.bool).tril()
        kvs = []
        for li, w in enumerate(self.layers):
            ln1, qkv, o, *_ = w
            q, k, v = self._split_qkv(qkv(self._rms(x, ln1)), pos)
            k, v = k.transpose(0, 1), v.transpose(0, 1)  # [G, n, d]
            if store is not None:
                kc, vc, slot = store
                kc[li][slot, :, :n] = k
                vc[li][slot, :, :n] = v
            elif collect:
                kvs.append((k.contiguous(), v.contiguous()))
            if start:
                pk, pv = self._prefix_kv[li]
                k, v = torch.cat([pk, k], 1), torch.cat([pv, v], 1)
            att = F.scaled_dot_product_attention(
                q.transpose(0, 1)[None], k[None], v[None], attn_mask=mask, is_causal=not start, enable_gqa=True
            )
            x = x + o(att[0].transpose(0, 1).reshape(n, -1))
            x = self._mlp(x, w)
        if hidden:
            return x[-1:], kvs
        logits = self.lm_head(self._rms(x[-1:], self.norm))[0]
        return logits, kvs

    def _prefill_batch(
        self,
        suffixes: Sequence[Sequence[int]],
        start: int,
        store: tuple[list[torch.Tensor], list[torch.Tensor], Sequence[int]] | None,
    ) -> torch.Tensor:
        """Run several prompts' ``suffixes`` (each at positions ``start``...) in one pass.

        Projections and MLP see all their tokens as one matrix; attention is per prompt, over the shared prefix (when
        ``start``) and causally over its own tokens, padded to the longest suffix. Writes suffix ``j``'s K/V into slot
        ``store[2][j]`` of the caches ``store[:2]`` when ``store`` is given. Returns the final hidden state (before the
        norm) of each suffix's last token, ``[len(suffixes), D]``.
        """
        if _FLASH is None or len(suffixes) == 1:
            outs = []
            for j, ids in enumerate(suffixes):
                one = None if store is None else (store[0], store[1], store[2][j])
                h, _ = self._prefill(ids, start, one, collect=False, hidden=True)
                outs.append(h)
            return torch.cat(outs)
        ns = [len(ids) for ids in suffixes]
        B, L, N = len(ns), max(ns), sum(ns)
        H, G, d = self.n_heads, self.n_kv, self.head_dim
        R = H // G
        rows = torch.cat([torch.full((n,), j) for j, n in enumerate(ns)])
        at = torch.cat([torch.arange(n) for n in ns])  # position of each token within its own suffix
        ends = torch.tensor(ns).cumsum(0)
        x = self.embed[torch.tensor([t for ids in suffixes for t in ids])]
        pos = at + start
        # Queries are laid out [B, G, R*L] (the R query heads of a KV head after one another), so every KV head is
        # read by its own queries without copying K/V per query head. A query at i sees the whole prefix and keys
        # 0..i of its own row: the padding after a short row is never seen by its real queries (padded ones are
        # dropped).
        seen = torch.ones(L, start + L, dtype=torch.bool)
        seen[:, start:] = torch.ones(L, L, dtype=torch.bool).tril()
        mask = torch.zeros(R * L, start + L, dtype=self.dtype)
        mask.masked_fill_(~seen.repeat(R, 1), float("-inf"))
        for li, w in enumerate(self.layers):
            ln1, qkv, o, *_ = w
            q, k, v = self._split_qkv(qkv(self._rms(x, ln1)), pos)  # [N, H, d], [N, G, d], [N, G, d]
            if store is not None:
                kc, vc, slots = store
                for j, slot in enumerate(slots):
                    lo, hi = int(ends[j]) - ns[j], int(ends[j])
                    kc[li][slot, :, : ns[j]] = k[lo:hi].transpose(0, 1)
                    vc[li][slot, :, : ns[j]] = v[lo:hi].transpose(0, 1)
            qp = q.new_zeros(B, L, H, d)
            kp, vp = k.new_zeros(B, start + L, G, d), v.new_zeros(B, start + L, G, d)
            qp[rows, at], kp[rows, at + start], vp[rows, at + start] = q, k, v
            if start:
                pk, pv = self._prefix_kv[li]  # [G, P, d]
                kp[:, :start], vp[:, :start] = pk.transpose(0, 1), pv.transpose(0, 1)
            qp = qp.view(B, L, G, R, d).permute(0, 2, 3, 1, 4).reshape(B, G, R * L, d)
            out, _ = _FLASH(qp, kp.transpose(1, 2), vp.transpose(1, 2), attn_mask=mask, scale=self.scale)
            out = out.reshape(B, G, R, L, d).permute(0, 3, 1, 2, 4)[rows, at]  # [N, G, R, d]
            x = x + o(out.reshape(N, H * d))
            x = self._mlp(x, w)
        return x[ends - 1]

    def clear_prefix(self) -> None:
        """Forget the cached shared prefix (the next call computes its own)."""
        self._prefix_ids, self._prefix_kv = (), []

    def _set_prefix(self, ids: Sequence[int]) -> None:
        """Make ``ids`` the shared prefix, reusing whatever leading part of the cached one still matches."""
        keep = common_prefix([self._prefix_ids, ids]) if self._prefix_ids else 0
        if keep:
            self.stats["prefix_reused"] += 1
            self._prefix_kv = [(k[:, :keep], v[:, :keep]) for k, v in self._prefix_kv]
            self._prefix_ids = self._prefix_ids[:keep]
        else:
            self.clear_prefix()
        if len(ids) > keep:
            _, more = self._prefill(ids[keep:], keep, None)
            if keep:
                self._prefix_kv = [
                    (torch.cat([k, k2], 1), torch.cat([v, v2], 1))
                    for (k, v), (k2, v2) in zip(self._prefix_kv, more, strict=True)
                ]
            else:
                self._prefix_kv = more
            self.stats["prefix_tokens"] += len(ids) - keep
        self._prefix_ids = tuple(ids)

    # ------------------------------------------------------------------ decode
    def _decode_step(
        self, tokens: torch.Tensor, lens: torch.Tensor, kc: list[torch.Tensor], vc: list[torch.Tensor]
    ) -> torch.Tensor:
        """One token for each of the ``B`` live rows (slots ``0..B-1``); returns logits ``[B, V]``."""
        B, H, G, d = tokens.shape[0], self.n_heads, self.n_kv, self.head_dim
        R, P = H // G, len(self._prefix_ids)
        rows = torch.arange(B)
        own_mask = None
        if self.kernel is None:
            T = int(lens.max()) + 1
            valid = torch.arange(T)[None] <= lens[:, None]
            own_mask = torch.zeros(B, 1, 1, T, dtype=self.dtype).masked_fill_(~valid[:, None, None], float("-inf"))
        x = self.embed[tokens]
        pos = lens + P
        for li, w in enumerate(self.layers):
            ln1, qkv, o, *_ = w
            q, k, v = self._split_qkv(qkv(self._rms(x, ln1)), pos)
            kc[li][rows, :, lens] = k
            vc[li][rows, :, lens] = v
            out = self._attend(q.reshape(B, G, R, d), kc[li], vc[li], lens, own_mask, li)
            x = x + o(out.reshape(B, H * d))
            x = self._mlp(x, w)
        return self.lm_head(self._rms(x, self.norm))

    def _attend(
        self,
        q: torch.Tensor,
        kc: torch.Tensor,
        vc: torch.Tensor,
        lens: torch.Tensor,
        own_mask: torch.Tensor | None,
        li: int,
    ) -> torch.Tensor:
        """Attention of one new token per row (``q``: ``[B, G, R, d]``, R query heads per KV head) over the shared
        prefix (one GEMM for all rows) and the row's own cached keys (``kc``/``vc`` ``[S, G, L, d]``, keys
        ``0..lens[b]``); returns ``[B, G, R, d]``. The two parts are merged exactly through their log-sum-exps."""
        B, G, R, d = q.shape
        P = len(self._prefix_ids)
        if own_mask is None and self.kernel is not None:  # the C kernel: each row over its own length only
            out, lse = decode_kernel.own_attention(self.kernel, q, kc, vc, lens, self.scale)
        elif own_mask is None:
            raise RuntimeError("the decode step needs a mask when the C kernel is off")
        elif _FLASH is not None:
            T = own_mask.shape[-1]
            out, lse = _FLASH(q, kc[:B, :, :T], vc[:B, :, :T], attn_mask=own_mask, scale=self.scale)
        else:
            return self._attend_matmul(q, kc, vc, own_mask, li)
        if not P:
            return out
        pk, pv = self._prefix_kv[li]
        qp = q.transpose(0, 1).reshape(1, G, B * R, d)
        if _FLASH is not None:
            out_p, lse_p = _FLASH(qp, pk[None], pv[None], scale=self.scale)
            out_p, lse_p = out_p[0], lse_p[0]
        else:
            s = torch.matmul(qp[0], pk.transpose(-1, -2)) * self.scale
            lse_p = torch.logsumexp(s, -1)
            out_p = torch.matmul(torch.softmax(s, -1), pv)
        out_p = out_p.view(G, B, R, d).transpose(0, 1)
        lse_p = lse_p.view(G, B, R).transpose(0, 1)
        top = torch.maximum(lse, lse_p)
        w, w_p = torch.exp(lse - top)[..., None], torch.exp(lse_p - top)[..., None]
        return ((out * w + out_p * w_p) / (w + w_p)).to(q.dtype)

    def _attend_matmul(
        self, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, own_mask: torch.Tensor, li: int
    ) -> torch.Tensor:
        """:meth:`_attend` with plain matmuls (PyTorch builds without the fused CPU attention)."""
        B, G, R, d = q.shape
        P, T = len(self._prefix_ids), own_mask.shape[-1]
        keys, vals = kc[:B, :, :T], vc[:B, :, :T]
        s_own = torch.matmul(q, keys.transpose(-1, -2)) * self.scale + own_mask  # [B, G, R, T]
        if not P:
            return torch.matmul(torch.softmax(s_own, dim=-1), vals)
        pk, pv = self._prefix_kv[li]
        s_pre = torch.matmul(q.transpose(0, 1).reshape(G, B * R, d), pk.transpose(-1, -2)) * self.scale
        p = torch.softmax(torch.cat([s_pre.view(G, B, R, P).transpose(0, 1), s_own], -1), dim=-1)
        pp = p[..., :P].transpose(0, 1).reshape(G, B * R, P)
        return torch.matmul(p[..., P:], vals) + torch.matmul(pp, pv).view(G, B, R, d).transpose(0, 1)

    # ------------------------------------------------------------------ choice
    def _choose(self, logits: torch.Tensor, rows: Sequence[_Row]) -> list[int]:
        """Next token per row: argmax when greedy, else a seeded draw with temperature and top-p."""
        picks = logits.argmax(-1).tolist()
        for i, r in enumerate(rows):
            if r.params.temperature <= 0:
                continue
            if r.generator is None:
                r.generator = generator_for(r.params)
            picks[i] = draw(logits[i], r.params, r.generator)
        return picks

    def _done(self, r: _Row) -> bool:
        p = r.params
        if r.tokens[-1] in self.eos or len(r.tokens) >= p.max_new_tokens:
            return True
        if p.stop and self.decode is not None:
            window = max(len(s) for s in p.stop) + 4
            tail = self.decode(r.tokens[-window:])
            return any(s and s in tail for s in p.stop)
        return False

    # --------------------------------------------------------------------- run
    @torch.inference_mode()
    def run(
        self, prompts: Sequence[Sequence[int]], params: Sequence[GenParams], share_prefix: bool = True,
        on_token: Callable[[int, int], None] | None = None,
    ) -> list[list[int]]:
        """Generate for every prompt; returns the new token ids of each (ending with the EOS token if it stopped).

        ``on_token(i, token_id)``, when given, is called as each token of prompt ``i`` is chosen (streaming)."""
        if not prompts:
            return []
        if not share_prefix:
            saved = self._prefix_ids, self._prefix_kv
            self.clear_prefix()
            try:
                return self._run(prompts, params, on_token)
            finally:
                self._prefix_ids, self._prefix_kv = saved
        P = min(common_prefix(prompts), min(len(p) for p in prompts) - 1)
        self._set_prefix(list(prompts[0][: max(P, 0)]))
        return self._run(prompts, params, on_token)

    @torch.inference_mode()
    def score(
        self, prompts: Sequence[Sequence[int]], exact: Sequence[Sequence[int]] | None = None
    ) -> torch.Tensor:
        """Next-token logits ``[N, V]`` (fp32) after each prompt: the shared prefix is run once, each prompt's
        suffix once, and only the last position goes through the output head.

        In bf16 the head's outputs are rounded to bf16 (~3 significant digits: steps of 0.125 at logits of 16-32,
        so P(A) vs P(B) moves in steps of ~0.03 and often ties exactly). ``exact[i]`` names token ids of prompt
        ``i`` (the options) whose logits are recomputed in fp32 from the last hidden state, normed in fp32: the
        option readings get fp32 resolution for two dot products each, without an fp32 copy of the model.
        """
        if not prompts:
            return torch.empty(0, self.embed.shape[0])
        P = min(common_prefix(prompts), min(len(p) for p in prompts) - 1)
        self._set_prefix(list(prompts[0][: max(P, 0)]))
        P = len(self._prefix_ids)
        hs = []
        for chunk in _chunks([list(p[P:]) for p in prompts], PREFILL_TOKENS):
            hs.append(self._prefill_batch(chunk, P, None))
            self.stats["prefill_tokens"] += sum(len(ids) for ids in chunk)
        hidden = torch.cat(hs)
        logits = self.lm_head(self._rms(hidden, self.norm)).float()  # one GEMM through the head for all prompts
        if exact is None or self.dtype == torch.float32:
            return logits
        for i, h in enumerate(hidden):
            if not exact[i]:
                continue
            ids = torch.tensor(list(exact[i]))
            hf = h[None].float()
            hf = self.norm.float() * (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + self.eps))
            exact_logits = (hf @ self.head_weight[ids].float().T)[0]
            logits[i, ids] = exact_logits if self.head_bias is None else exact_logits + self.head_bias[ids].float()
        return logits

    def _run(self, prompts: Sequence[Sequence[int]], params: Sequence[GenParams],
             on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
        """Continuous batching over the slots, every prompt starting after the current shared prefix."""
        P = len(self._prefix_ids)
        longest = max(len(p) - P + q.max_new_tokens for p, q in zip(prompts, params, strict=True))
        per_slot = 2 * len(self.layers) * self.n_kv * longest * self.head_dim * self.embed.element_size()
        S = max(1, min(self.slots, len(prompts), self.cache_bytes // per_slot))
        G, d = self.n_kv, self.head_dim
        kc = [torch.zeros(S, G, longest, d, dtype=self.dtype) for _ in self.layers]
        vc = [torch.zeros(S, G, longest, d, dtype=self.dtype) for _ in self.layers]
        lens = torch.zeros(S, dtype=torch.long)
        last = torch.zeros(S, dtype=torch.long)
        live: list[_Row] = []
        waiting = list(range(len(prompts)))[::-1]
        results: list[list[int]] = [[] for _ in prompts]

        def retire(done: list[int]) -> None:
            for slot in sorted(done, reverse=True):
                results[live[slot].index] = live[slot].tokens
                end = len(live) - 1
                if slot != end:
                    n = int(lens[end])
                    for layer in range(len(self.layers)):
                        kc[layer][slot, :, :n] = kc[layer][end, :, :n]
                        vc[layer][slot, :, :n] = vc[layer][end, :, :n]
                    lens[slot], last[slot] = lens[end], last[end]
                    live[slot] = live[end]
                live.pop()

        while waiting or live:
            while waiting and len(live) < S:
                take: list[int] = []  # the waiting prompts that fit the free slots and one prefill pass
                size = 0
                while waiting and len(live) + len(take) < S:
                    n = len(prompts[waiting[-1]]) - P
                    if take and size + n > PREFILL_TOKENS:
                        break
                    take.append(waiting.pop())
                    size += n
                suffixes = [list(prompts[i][P:]) for i in take]
                first = len(live)
                hidden = self._prefill_batch(suffixes, P, (kc, vc, range(first, first + len(take))))
                self.stats["prefill_tokens"] += size
                logits = self.lm_head(self._rms(hidden, self.norm))
                new_rows = [_Row(i, params[i]) for i in take]
                live.extend(new_rows)
                done = []
                for j, (row, tok) in enumerate(zip(new_rows, self._choose(logits, new_rows), strict=True)):
                    row.tokens.append(tok)
                    if on_token is not None:
                        on_token(row.index, tok)
                    lens[first + j], last[first + j] = len(suffixes[j]), tok
                    if self._done(row):
                        done.append(first + j)
                retire(done)
            if not live:
                continue
            B = len(live)
            logits = self._decode_step(last[:B], lens[:B], kc, vc)
            self.stats["decode_steps"] += 1
            picks = self._choose(logits, live)
            lens[:B] += 1
            last[:B] = torch.tensor(picks)
            done = []
            for slot, (row, tok) in enumerate(zip(live, picks, strict=True)):
                row.tokens.append(tok)
                if on_token is not None:
                    on_token(row.index, tok)
                if self._done(row):
                    done.append(slot)
            retire(done)
        return results
