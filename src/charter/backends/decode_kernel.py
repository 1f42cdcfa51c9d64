"""An optional C kernel for the engine's hottest decode step: each row's attention over its own cached keys.

In decode every row has one new token, so attention per row and KV head is a few query vectors against that row's
keys: tiny matrix products that PyTorch's batched kernels run far below memory speed (measured: ~3x the time it takes
just to read the cache). This kernel streams each row's keys and values once, over the row's real length only
(no padding up to the longest row), and splits the rows across threads.

It is compiled on first use with the system C compiler (``cc``, ~1 s) into charter's cache folder and loaded with
ctypes: no build step, no Python headers. Without a compiler, or with ``CHARTER_NO_KERNEL=1``, :func:`load` returns
None and the engine uses PyTorch's fused attention instead, with the same results up to float rounding.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = r"""
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    const float *q, *k, *v;
    const int64_t *lens;
    float *out, *lse;
    int64_t G, R, D, L, start, end;
    float scale;
} job_t;

/* rows b*G+g in [start, end): q [B,G,R,D], k/v caches [S,G,L,D], keys 0..lens[b] are valid. */
static void *work(void *arg) {
    const job_t *j = (const job_t *)arg;
    const int64_t R = j->R, D = j->D;
    float *s = (float *)malloc(sizeof(float) * R * (j->L + 1));
    float m[64], sum[64];
    for (int64_t bg = j->start; bg < j->end; bg++) {
        const int64_t n = j->lens[bg / j->G] + 1;
        const float *q = j->q + bg * R * D, *K = j->k + bg * j->L * D, *V = j->v + bg * j->L * D;
        float *o = j->out + bg * R * D;
        for (int64_t r = 0; r < R; r++) { m[r] = -INFINITY; sum[r] = 0.f; }
        for (int64_t t = 0; t < n; t++) {
            const float *kt = K + t * D;
            for (int64_t r = 0; r < R; r++) {
                const float *qr = q + r * D;
                float part[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
                int64_t d = 0;
                for (; d + 8 <= D; d += 8)
                    for (int i = 0; i < 8; i++) part[i] += qr[d + i] * kt[d + i];
                for (; d < D; d++) part[0] += qr[d] * kt[d];
                float acc = ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]));
                acc *= j->scale;
                s[r * n + t] = acc;
                if (acc > m[r]) m[r] = acc;
            }
        }
        for (int64_t i = 0; i < R * D; i++) o[i] = 0.f;
        for (int64_t t = 0; t < n; t++) {
            const float *vt = V + t * D;
            for (int64_t r = 0; r < R; r++) {
                const float e = expf(s[r * n + t] - m[r]);
                sum[r] += e;
                float *orow = o + r * D;
                #pragma omp simd
                for (int64_t d = 0; d < D; d++) orow[d] += e * vt[d];
            }
        }
        for (int64_t r = 0; r < R; r++) {
            const float inv = 1.f / sum[r];
            for (int64_t d = 0; d < D; d++) o[r * D + d] *= inv;
            j->lse[bg * R + r] = m[r] + logf(sum[r]);
        }
    }
    free(s);
    return NULL;
}

int own_attention(const float *q, const float *k, const float *v, const int64_t *lens, float *out, float *lse,
                  int64_t B, int64_t G, int64_t R, int64_t D, int64_t L, float scale, int threads) {
    if (R > 64) return 1;
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    const int64_t rows = B * G;
    if (threads > rows) threads = (int)rows;
    job_t jobs[64];
    pthread_t tids[64];
    for (int i = 0; i < threads; i++) {
        job_t j = {q, k, v, lens, out, lse, G, R, D, L, rows * i / threads, rows * (i + 1) / threads, scale};
        jobs[i] = j;
    }
    int started[64] = {0};
    for (int i = 1; i < threads; i++) {
        if (pthread_create(&tids[i], NULL, work, &jobs[i]) == 0) started[i] = 1;
        else work(&jobs[i]);
    }
    work(&jobs[0]);
    for (int i = 1; i < threads; i++) if (started[i]) pthread_join(tids[i], NULL);
    return 0;
}
"""

_LIB: ctypes.CDLL | None = None
_TRIED = False


def _tag() -> str:
    """Source + machine fingerprint: a cache shared between different CPUs never loads a foreign build."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return hashlib.sha256(f"{SOURCE}|{platform.machine()}|{flags}".encode()).hexdigest()[:16]


def load() -> ctypes.CDLL | None:
    """The compiled kernel (built on first use), or None when disabled or no C compiler works here."""
    global _LIB, _TRIED
    if _TRIED:
        return _LIB
    _TRIED = True
    if os.environ.get("CHARTER_NO_KERNEL") or platform.system() != "Linux":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    from charter.embedded import cache_root

    target = cache_root() / "kernels" / f"own_attention-{_tag()}.so"
    try:
        if not target.is_file():
            if compiler is None:
                return None
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                src, built = Path(tmp) / "k.c", Path(tmp) / "k.so"
                src.write_text(SOURCE)
                flags = ["-O3", "-march=native", "-fopenmp-simd", "-shared", "-fPIC"]
                subprocess.run(
                    [compiler, *flags, "-o", str(built), str(src), "-lpthread", "-lm"],
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
                os.replace(built, target)
        lib = ctypes.CDLL(str(target))
        lib.own_attention.restype = ctypes.c_int
        lib.own_attention.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 5 + [ctypes.c_float, ctypes.c_int]
        _LIB = lib
    except (OSError, subprocess.SubprocessError):
        _LIB = None
    return _LIB


def own_attention(
    lib: ctypes.CDLL, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, lens: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``q`` ``[B, G, R, D]`` over keys ``0..lens[b]`` of the caches ``[S, G, L, D]`` (rows
    ``0..B-1``); returns the output ``[B, G, R, D]`` and the log-sum-exp of the scores ``[B, G, R]`` (fp32 only)."""
    B, G, R, D = q.shape
    q = q.contiguous()
    lens = lens.contiguous()
    assert kc.is_contiguous() and vc.is_contiguous() and kc.dtype == torch.float32
    out = torch.empty(B, G, R, D)
    lse = torch.empty(B, G, R)
    err = lib.own_attention(
        q.data_ptr(),
        kc.data_ptr(),
        vc.data_ptr(),
        lens.data_ptr(),
        out.data_ptr(),
        lse.data_ptr(),
        B,
        G,
        R,
        D,
        kc.shape[2],
        scale,
        torch.get_num_threads(),
    )
    if err:
        raise RuntimeError("own_attention kernel refused its input")
    return out, lse
