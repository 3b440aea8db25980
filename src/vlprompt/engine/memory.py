"""What a training step's forward pass keeps alive for its backward pass, counted exactly.

Use it to choose a batch size or ``--train.activation_checkpointing`` before a run: on the meta device
(``backbone.to("meta")``; tensors with sizes and no data) it counts a step far larger than the machine's memory.
The benchmarks' saved-activation figures come from it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class _Allocations(TorchDispatchMode):
    """Every storage an operator allocates while active (not its views of its inputs' storages, e.g. a weight's
    transpose), held by weak reference with its size."""

    def __init__(self) -> None:
        super().__init__()
        self.storages: dict[int, tuple[StorageWeakRef, int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata not in inputs:
                storage = t.untyped_storage()
                known = self.storages.get(storage._cdata)
                if known is None or known[0].expired():  # an address is reused once its storage is freed
                    self.storages[storage._cdata] = (StorageWeakRef(storage), storage.nbytes())
        return out

    def alive(self) -> int:
        return sum(nbytes for ref, nbytes in self.storages.values() if not ref.expired())


def held_bytes(forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of the storages ``forward()`` (a step's loss) allocates and leaves alive for its backward pass: the
    saved activations and, with activation checkpointing, the checkpointed blocks' inputs. Weights, inputs made
    before it and the views it takes of them do not count. Exact, on any device (the meta device included); not the
    peak, which adds what the backward pass allocates (with checkpointing, one block's recomputed activations)."""
    mode = _Allocations()
    with mode:
        loss = forward()
    held = mode.alive()
    del loss
    return held
