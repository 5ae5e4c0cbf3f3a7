"""Stored teacher logits (TinyViT style): save a teacher's top-K logits for every epoch's augmented images once
(:mod:`.save`), in fixed-size checksummed shards (:mod:`.format`), then distil from them without running the
teacher (:mod:`.replay`). A store serves runs with its data recipe and seed (:mod:`.fingerprint`).

A teacher read from a store (``distill.teachers.<name>: {logits: PATH}``) is registered here as an origin of
:mod:`vitkd.teachers`."""
from ..teachers import register_origin
from .format import StoreError
from .replay import StoredTeacher

__all__ = ["StoreError", "StoredTeacher"]

register_origin("logits", source=StoredTeacher.from_config)
