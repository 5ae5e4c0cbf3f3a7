"""The comparison suite: many runs of one frozen recipe -> a table and plots in ``results/``.

Protocol (see ``configs/compare/digits.yaml``):
1. teachers are trained once and cached (a run is reused when its config is unchanged);
2. the recipe is tuned for the no-KD student on the validation split beforehand (``vitkd tune``: several
   knobs, several seeds, the main data size; :mod:`.tune`, its own record), then frozen for every row;
3. every row (method) runs with that recipe for every seed; top-1 is read on the held-out test split
   at the last epoch (nothing is selected on test); each row is compared with its baseline paired by
   seed, Holm-corrected within its family of comparisons (:mod:`.verdicts`, :mod:`.stats`);
4. params, MACs, training cost per image and img/s are measured for every student and teacher.

The package is split by job: :mod:`.main` (``vitkd compare``: the loop over the job kinds), :mod:`.suite` (the
YAML schema), :mod:`.jobs` (the job kinds' registry), :mod:`.plan` (the teachers' and rows' jobs, checks), :mod:`.from_zoo` (quick mode's restored
teachers), :mod:`.runner` and :mod:`.executors` (running them), :mod:`.measure` (costs, accuracies, verdicts),
:mod:`.report` and :mod:`.plots` (outputs). Methods with jobs of their own (stored logits, synthetic sets,
pipelines of stages) register their kinds from :mod:`vitkd.methods`. Runs go to ``<cache>/<suite>/...`` as
ordinary ``vitkd train`` run folders (and the folders other kinds write), executed as separate processes, ``jobs``
at a time (one thread each), so both cores are used; or, with ``--executor ray``, as Ray tasks on a cluster
(:mod:`vitkd.compare.executors`).
"""
# the kinds this package adds besides the teachers and rows of .plan: quick mode's restored teachers, tuning runs.
# Only the light modules load with the package (methods register their kinds on `import vitkd`); the statistics,
# plots and executors load when a suite runs (.main) or a tuning runs (.tune).
from . import from_zoo, tune  # noqa: F401,E402
