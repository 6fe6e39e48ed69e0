"""Peak bytes of the tensors a block of code allocates, on any device (CPU included).

CUDA has ``torch.cuda.max_memory_allocated``; the CPU allocator keeps no statistics, and the
process's peak RSS cannot tell a 32 MB temporary from the rest of the process. This counts
every new tensor storage created by a PyTorch operation while the context is active (the
autograd backward included), drops it when the storage is freed, and keeps the running peak.
Used by ``tests/test_chunked_loss.py`` and ``benchmarks/loss_path.py`` to show what the loss
path allocates.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class TensorAllocations(TorchDispatchMode):
    """``with TensorAllocations() as mem: ...`` then ``mem.peak`` (bytes) and ``mem.largest``.

    Attributes:
        current: bytes of storages allocated inside the block that are still alive.
        peak: the largest ``current`` seen, i.e. the block's peak extra memory.
        largest: bytes of the largest single storage allocated inside the block.

    Only storages that no input of the operation already owned count, so views, in-place
    operations and ``out=`` writes into existing tensors cost nothing, as in the allocator.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self.largest = 0
        self._live: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        owned = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)}
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key not in owned and key not in self._live and storage.nbytes():
                    self._add(storage, key)
        return out

    def _add(self, storage: torch.UntypedStorage, key: int) -> None:
        """Count a new storage until it is freed (its Python object lives as long as it does)."""
        nbytes = storage.nbytes()
        self._live.add(key)
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        self.largest = max(self.largest, nbytes)
        weakref.finalize(storage, self._free, key, nbytes)

    def _free(self, key: int, nbytes: int) -> None:
        self._live.discard(key)
        self.current -= nbytes
