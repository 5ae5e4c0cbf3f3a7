"""The model zoo: published students and teachers, each a folder in timm's Hugging Face Hub layout listed in an
index (``models/zoo.yaml``), downloaded verified into a cache and loaded through timm's ``local-dir:`` source.

Split by job: :mod:`.index` (the index: schema, where it is, listing), :mod:`.fetch` (verified, resumable,
locked downloads into the cache), :mod:`.load` (models, teachers, configs), :mod:`.evaluate` (an entry on its own
split), :mod:`.publish` (run folders into entries and cards), :mod:`.commands` (``vitkd zoo ...``). A teacher
named by its entry (``{zoo: NAME}``) is registered here as an origin of :mod:`vitkd.teachers`.

    import vitkd.zoo
    vitkd.zoo.list_models(dataset="digits")
    model = vitkd.zoo.create_model("digits-teacher-cnn_s")
"""
from .index import ZooEntry, ZooError, ZooIndex, load_index
from ..teachers import register_origin
from .evaluate import evaluate_entry
from .load import create_model, list_models, model_folder, teacher_model

register_origin("zoo", model=teacher_model)

__all__ = ["create_model", "list_models", "model_folder", "evaluate_entry", "load_index", "ZooEntry", "ZooIndex",
           "ZooError"]
