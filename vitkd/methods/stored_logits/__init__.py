"""Stored teacher logits (TinyViT style): save a teacher's top-K logits for every epoch's augmented images once
(:mod:`.save`), in fixed-size checksummed shards (:mod:`.format`), then distil from them without running the
teacher (:mod:`.replay`). A store serves runs with its data recipe and seed (:mod:`.fingerprint`).

A teacher read from a store (``distill.teachers.<name>: {logits: PATH}``) is registered here as an origin of
:mod:`vitkd.teachers`."""
from typing import Optional

from ...config import TeacherCfg, register_section
from ...teachers import register_origin
from .format import StoreError
from .replay import SOURCE_KEY, StoredTeacher

__all__ = ["StoreError", "StoredTeacher"]

register_section(TeacherCfg, SOURCE_KEY, Optional[str], path=True)   # a store folder (`vitkd logits save`)
register_origin(SOURCE_KEY, source=StoredTeacher.from_config)
from . import suite  # noqa: F401,E402  (a suite's stores: their job kind and suite keys)
from . import commands  # noqa: F401,E402  (vitkd logits save)
