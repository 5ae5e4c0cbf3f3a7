"""Stored teacher logits (TinyViT style): save a teacher's top-K logits for every epoch's augmented images once
(:mod:`.save`), in fixed-size checksummed shards (:mod:`.format`), then distil from them without running the
teacher (:mod:`.replay`). A store serves runs with its data recipe and seed (:mod:`.fingerprint`)."""
from .format import StoreError  # noqa: F401
