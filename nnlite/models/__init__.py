"""Models: ``Sequential``."""

from nnlite.models.sequential import NonFiniteLossWarning, Sequential

__all__ = ["Sequential", "NonFiniteLossWarning"]
