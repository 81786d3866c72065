"""Item feature files built once from a dataset and checked against the config on every later load
(text features, image features)."""

import torch


def build_once(is_built, build):
    """Call ``build()`` unless ``is_built()``: on rank 0 only under DDP, the other ranks wait for it."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if (not distributed or torch.distributed.get_rank() == 0) and not is_built():
        build()
    if distributed:
        torch.distributed.barrier()


def stale_settings(recorded, expected):
    """``"key: file <recorded>, config <expected>; ..."`` for every setting the file was built with that
    the config no longer has; empty when it still matches."""
    return "; ".join(
        f"{key}: file {recorded.get(key)!r}, config {value!r}"
        for key, value in expected.items() if recorded.get(key) != value
    )
