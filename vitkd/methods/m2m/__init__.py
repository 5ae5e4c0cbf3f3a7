"""m2mKD (module-to-module distillation): a student's module trained inside a frozen meta model against the
teacher's module in the same place, then the modules assembled.

* :mod:`.config`   the ``m2m`` section of a run config (a stage: a module job or an assembly), declared here
* :mod:`.loss`     the ``m2mkd`` term (registered in :data:`vitkd.losses.LOSSES`)
* :mod:`.stage`    module surgery, the stage's distiller (registered as the ``m2m`` section's distiller builder),
                   the compatibility check
* :mod:`.pipeline` the ``m2mkd:`` file: meta, check, incubation, module jobs, assembly as stages (a run kind)
* :mod:`.suite`    a suite row trained by such a pipeline (``pipeline: FILE``): its job kinds, costs and overrides
"""
from ...engine.kinds import register_run_kind
from . import loss, stage  # noqa: F401  (register the term, the section and the stage's distiller builder)
from .pipeline import PIPELINE_KEY, train_pipeline

# one process; stages reused or resumed by the pipeline itself, so no --resume
register_run_kind("m2mkd pipeline", PIPELINE_KEY, train_pipeline, one_process=True, takes_resume=False)
from . import suite  # noqa: F401,E402  (a suite row trained by a pipeline: its job kind and row key)
