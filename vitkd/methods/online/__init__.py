"""Online and self distillation: teachers that are not finished models but change as the student trains.

* ``peer`` (:mod:`.peer`): a model trained jointly with the student, in the same step, by its own terms (deep mutual
  learning, Zhang et al. 2018: its CE and a KL towards the student; or any term, ``student: <peer>``). Peers may be
  any timm architectures (two ViTs: online homomorphic; a CNN and a ViT: heteromorphic).
* ``ema`` (:mod:`.ema`): the engine's EMA of the student (``train.ema_decay``), read like a live teacher after a
  warm-up (self distillation).

Both are registered here as origins of :mod:`vitkd.teachers` (``distill.teachers.<name>: {peer: {...}}`` or
``{ema: {...}}``); the distiller and the engine treat them through the generic hooks of
:class:`vitkd.teachers.TeacherSource` (``trainable``, ``active``, ``bind``, ``exported``) and name neither.
"""
from typing import Any, Dict, Optional

from ...config import TeacherCfg, register_section
from ...teachers import register_origin
from .ema import EmaTeacher
from .peer import PeerTeacher

__all__ = ["PeerTeacher", "EmaTeacher"]

for key, source in (("peer", PeerTeacher), ("ema", EmaTeacher)):
    register_section(TeacherCfg, key, Optional[Dict[str, Any]])   # the entry's settings (checked by the source)
    register_origin(key, source=source.from_config, in_run=True)   # trained in the run: no weights elsewhere
