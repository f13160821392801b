"""The transport-independent core (``service.core.core``) and what it says about models
(``service.core.views``)."""

from service.core.core import Core, Inferred, Readiness

__all__ = ["Core", "Inferred", "Readiness"]
