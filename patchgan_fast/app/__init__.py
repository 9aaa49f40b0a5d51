"""The application: the ``patchgan-fast`` command (:mod:`.cli`), screening collections (:mod:`.screening`)
with its report (:mod:`.report`), ``evaluate`` (:mod:`.evaluate`) and the demo (:mod:`.demo`)."""

from .screening import ScreenSummary, screen

__all__ = ["screen", "ScreenSummary"]
