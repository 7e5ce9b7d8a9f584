"""Errors raised by rs-pgd.

Every error derives from :class:`RsPgdError` and also from the builtin that best describes it, so callers can
catch either. The message of each error is one line that names the problem and says what to do; the CLI prints
it as ``Error: <message>`` and exits with status 2.
"""


class RsPgdError(Exception):
    """Root of all rs-pgd errors."""


class SceneError(RsPgdError, ValueError):
    """A scene raster cannot be used (missing, unreadable, not georeferenced as required, ...)."""


class LabelError(RsPgdError, ValueError):
    """Labels cannot be used (no overlap, bad class column, unreadable file, ...)."""


class GridError(RsPgdError, ValueError):
    """Tile, margin or stride values that do not form a valid window grid."""


class PresetError(RsPgdError, KeyError):
    """Unknown band preset or band selection that does not fit the scene."""

    def __str__(self):  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class OptionError(RsPgdError, ValueError):
    """An option value out of its range (e.g. ``batch_size=0``, ``workers=-1``)."""


class ModelError(RsPgdError, ValueError):
    """Unknown architecture or encoder, or weights that do not fit the model."""


class CheckpointError(RsPgdError, ValueError):
    """A checkpoint that cannot be loaded, or that does not fit the scene."""


class OutputError(RsPgdError, OSError):
    """An output path that cannot be written."""


class DeviceError(RsPgdError, RuntimeError):
    """A requested device (e.g. CUDA) that is not available."""


class DistributedError(RsPgdError, RuntimeError):
    """A torchrun rank lost its peers (one of them stopped), or the ranks disagree."""


class TrainingError(RsPgdError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN)."""


class NonFiniteLossError(TrainingError):
    """The loss of a window batch became NaN or infinite (raised before its gradient is accumulated)."""

    def __init__(self, value: float):
        self.value = value
        super().__init__(f"the loss became {value}; lower the learning rate or use float32 instead of bf16/fp16")
