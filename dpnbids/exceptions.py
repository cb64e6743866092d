"""Exception hierarchy.

Every error the user can cause derives from :class:`DpnbidsError`. The CLI
catches these and prints only the message (no traceback) before exiting
non-zero. A message says what happened, what was expected, and how to fix it.
"""


class DpnbidsError(Exception):
    """Base class for errors reported to the user without a traceback."""

    exit_code = 1


class InputError(DpnbidsError):
    """The input dataset, a file or an option is not what dpnbids needs."""

    exit_code = 2


class ConfigError(InputError):
    """Option values that contradict each other.

    The message names configuration fields in backticks (```low_pass```, ```pca_dim```, see
    :mod:`dpnbids.messages`); ``params`` lists them, so the command line can say which flags
    they are.
    """

    def __init__(self, message: str):
        from dpnbids.messages import PARAMETER

        super().__init__(message)
        self.params = tuple(dict.fromkeys(PARAMETER.findall(message)))


class DimensionError(InputError):
    """Images or arrays have incompatible shapes, grids or lengths."""


class DataLeakageError(DpnbidsError):
    """A subject appears in more than one of training, validation and test."""

    exit_code = 3


class ModelMismatchError(InputError):
    """A saved model does not match the data it is applied to."""


class BundleError(ModelMismatchError):
    """A saved model folder is damaged: a checksum, key, type, shape or file is wrong."""


class WorkflowError(DpnbidsError):
    """One or more nipype nodes failed; the message names subjects and crash files."""

    exit_code = 4
