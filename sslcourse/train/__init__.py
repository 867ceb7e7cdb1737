"""Training: one step loop, :func:`fit`, and the parts it hands work to.

* :mod:`.loop`: :func:`fit` and its :class:`History`;
* :mod:`.checkpoint`: exact save and resume;
* :mod:`.loss_log`: deferred loss read-back and the NaN check;
* :mod:`.reporter`: progress bar and live plot;
* :mod:`.schedule`: :func:`cosine_schedule`.
"""
from .checkpoint import CheckpointError
from .loop import History, _autocast, _move, fit
from .loss_log import NonFiniteLossError
from .schedule import cosine_schedule

__all__ = ["fit", "History", "NonFiniteLossError", "CheckpointError", "cosine_schedule"]
