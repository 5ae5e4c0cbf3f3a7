"""Methods that are more than a loss term, one folder each.

Each method registers what it adds (a run kind, a teacher-source kind, a suite job kind, the config sections it
reads) in the registries that the lower modules own; importing this package imports every method, so every registry
is complete. Nothing below this floor names a method.
"""
from . import chain, datafree, m2m, online, stored_logits  # noqa: F401,E402  (each registers what it adds)
