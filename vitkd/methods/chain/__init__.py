"""Teacher-assistant chains: a file of stages (``chain:``), each a full run config whose teacher may be an earlier
stage's run (``checkpoint: "@stage"``), trained in order (TAKD; born-again generations, ``generations: N``, are a
chain of one architecture). :mod:`.stages` holds the file's schema and the runner; :mod:`.suite` costs a suite row
with its earlier generations (``count_generations``)."""
from ...engine.kinds import register_run_kind
from .stages import SECTION, train_chain

register_run_kind("chain", SECTION, train_chain, one_process=True, takes_resume=True)
from . import suite  # noqa: F401,E402  (a suite row costed with its earlier generations: its row key and kind)
