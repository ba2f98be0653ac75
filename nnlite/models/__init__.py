"""Models: ``Sequential``; whole-model ``save_model`` / ``load_model``."""

from nnlite.models.saving import load_model, save_model
from nnlite.models.sequential import NonFiniteLossWarning, Sequential

__all__ = ["Sequential", "NonFiniteLossWarning", "load_model", "save_model"]
