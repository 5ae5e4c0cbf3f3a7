"""The model zoo: published students and teachers, each a folder in timm's Hugging Face Hub layout listed in an
index (``models/zoo.yaml``), downloaded verified into a cache and loaded through timm's ``local-dir:`` source.

Split by job: :mod:`.index` (the index: schema, where it is, listing), :mod:`.fetch` (verified, resumable,
locked downloads into the cache), :mod:`.load` (models, configs, evaluation), :mod:`.publish` (run folders and
suites into entries and cards), :mod:`.commands` (``vitkd zoo ...``).

    import vitkd.zoo
    vitkd.zoo.list_models(dataset="digits")
    model = vitkd.zoo.create_model("digits-teacher-cnn_s")
"""
from .index import ZooEntry, ZooError, ZooIndex, load_index
from .load import create_model, evaluate_entry, list_models, model_folder

__all__ = ["create_model", "list_models", "model_folder", "evaluate_entry", "load_index", "ZooEntry", "ZooIndex",
           "ZooError"]
