"""One compiled pass that scores a chunk of base-2 logits: log-sum-exp, NLL and entropy.

In eager PyTorch, scoring ``[R, V]`` logits takes four passes over them (``exp2``, its sum,
the product with the logits, that sum), two of which write ``[R, V]`` temporaries. Compiled
with ``torch.compile`` (inductor's C++ backend on CPU) the same few lines become one loop
over each row that reads the logits once: on a 2-core AVX2 EPYC a 256 x 4096 chunk takes
0.25 ms instead of 0.55 ms, which is most of what evaluation with every metric costs on top
of a bare forward for a small model (docs/performance.md).

The kernel is compiled on first use (about 20 s on a cold machine, 1-2 s once inductor's
on-disk cache holds it) and used by :func:`zoo.metrics.chunked.chunked_head_nll` on CPU for
float32. Where it cannot be used, scoring stays eager with the same values to float32
rounding:

- ``ZOO_FUSED_METRICS=0`` in the environment turns it off;
- compiling fails (no C++ compiler, an unsupported platform): one warning, then eager for the
  rest of the process;
- a Python dispatch mode is active (``zoo.allocations`` counting tensors), which compiled
  code would bypass.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

log = logging.getLogger(__name__)

LN2 = math.log(2.0)

#: elements of ``[R, V]`` per chunk when the kernel scores them: it reads each chunk once, so
#: chunks can outgrow the cache, and the head's matmul is more efficient on more rows. 2048
#: rows of a 4096 vocabulary (a 32 MB buffer per thread): head + scoring of a 2048-row batch
#: took 45.0 / 78.3 ms at d=128 / 256 against 47.9 / 84.6 ms with 1024-row chunks and
#: 45.7 / 80.0 ms for the bare forward's fresh-logits ``F.linear`` alone (2-core AVX2 EPYC)
CHUNK_ELEMENTS = 2**23

#: environment variable that turns the compiled kernel off (``0``, ``false``, ``off``, ``no``)
ENV_SWITCH = "ZOO_FUSED_METRICS"

_compiled: Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor, Tensor]] | None = None
_failed = False


def base2_scores(x2: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(lse, nll, entropy, total)`` of each row of base-2 logits ``x2 = x log2 e`` ``[R, V]``.

    ``total = sum_v 2^x2`` (not shifted: the caller rescores rows where it is 0 or inf);
    ``lse = ln 2 log2 total`` and ``nll = lse - x[label]`` in nats, and the entropy
    ``H = ln 2 (log2 total - sum_v 2^x2 x2 / total)``; a ``-inf`` logit (``2^x2 = 0``) adds
    nothing, where ``0 * -inf`` would be NaN: ``0 log 0`` is 0. This is the function that gets compiled; called as it
    is, it is plain eager PyTorch."""
    picked = x2.gather(1, labels[:, None]).squeeze(1)
    exp = torch.exp2(x2)
    total = exp.sum(-1)
    log2_total = total.log2()
    weighted = torch.where(exp > 0, exp * x2, 0.0).sum(-1)  # not nansum: twice as slow compiled
    return log2_total * LN2, (log2_total - picked) * LN2, (log2_total - weighted / total) * LN2, total


def enabled() -> bool:
    """Whether the environment allows the compiled kernel (``ZOO_FUSED_METRICS``, default on)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def usable(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether :func:`fused_base2_scores` will try the compiled kernel for this input."""
    return not _failed and device.type == "cpu" and dtype == torch.float32 and enabled()


def fused_base2_scores(x2: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """:func:`base2_scores` compiled into one pass, or ``None`` where the caller should score
    eagerly: float64 or non-CPU input, the switch off, an active dispatch mode, or a compiler
    that failed once already."""
    global _compiled, _failed
    if not usable(x2.device, x2.dtype) or _get_current_dispatch_mode() is not None:
        return None
    if _compiled is None:
        log.info("compiling the fused metric kernel (once per process; inductor caches it on disk)")
        _compiled = torch.compile(base2_scores, fullgraph=True, dynamic=True)  # one graph for every shape
    if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < x2.shape[1]):
        # the compiled gather's bounds check would abort the process (it throws inside an
        # OpenMP region): the eager pass raises the real IndexError instead
        return None
    try:
        return _compiled(x2, labels)
    except Exception as error:  # noqa: BLE001 - any compiler failure: fall back to eager
        _failed = True
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        log.warning("the fused metric kernel could not be compiled (%s); scoring in eager PyTorch, "
                    "a few percent slower. Set %s=0 to skip the attempt.", reason, ENV_SWITCH)
        return None
