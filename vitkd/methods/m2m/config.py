"""The ``m2m`` section of a run config: a stage of module-level distillation (declared here, not in the core
schema; read with ``section(cfg, "m2m")``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ...config import ConfigError, RunCfg, register_section, section

__all__ = ["M2MCfg", "SECTION", "m2m_of"]

SECTION = "m2m"


@dataclass
class M2MCfg:
    """A stage of module-level distillation (m2mKD; see :mod:`vitkd.methods.m2m.stage`). The models it reads are
    ``distill.teachers`` entries, named here."""
    depths: List[int] = field(default_factory=list)   # blocks per module of model.name (summing to its depth)
    module: Optional[int] = None       # module job / incubation: the module of model.name that trains
    meta: Optional[str] = None         # the teacher entry holding the frozen meta model (one block per module)
    teacher_depths: List[int] = field(default_factory=list)   # blocks per module of the distilling teachers
    init: Optional[str] = None         # incubation: the teacher entry whose weights model.name starts from
    parts: List[str] = field(default_factory=list)   # assembly: teacher entries holding module runs 0..M-1

    def __post_init__(self):
        if not self.depths:
            raise ConfigError("m2m.depths: missing (blocks per module, e.g. [2, 2, 2])")
        if self.parts and (self.module is not None or self.meta is not None or self.init is not None):
            raise ConfigError("m2m.parts: an assembly reads finished module runs; it takes no module, meta or init")
        if not self.parts and (self.module is None or self.meta is None):
            raise ConfigError("m2m: a module job needs module and meta (or parts, for an assembly)")



def m2m_of(cfg: RunCfg) -> Optional[M2MCfg]:
    """The run's ``m2m`` section (None: not an m2m stage)."""
    return section(cfg, SECTION)


register_section(RunCfg, SECTION, Optional[M2MCfg])
