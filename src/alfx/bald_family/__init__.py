"""Batch acquisitions built on the mutual information of labels.

BatchBALD (exact enumeration, then sampled configurations), k-BALD and
top-k BALD, their dynamic-size and conservative variants, and the
prediction-oriented EPIG, BatchEPIG and k-EPIG.

May import: `alfx._core`, `alfx.information`.
"""

from alfx.bald_family._batch_epig import batch_epig
from alfx.bald_family._batchbald import batchbald
from alfx.bald_family._epig import epig
from alfx.bald_family._epig import pool_targets
from alfx.bald_family._kbald import conservative_bald
from alfx.bald_family._kbald import kbald
from alfx.bald_family._kbald import kbald_dynamic
from alfx.bald_family._kbald import topk_bald
from alfx.bald_family._kepig import kepig

__all__ = (
  "batch_epig",
  "batchbald",
  "conservative_bald",
  "epig",
  "kbald",
  "kbald_dynamic",
  "kepig",
  "pool_targets",
  "topk_bald",
)
