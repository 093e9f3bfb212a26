"""The errors mindcoat reports to its users: one family, each said in one line.

Every command catches ``MindcoatError`` in one place (``mindcoat.cli.run``), prints
``error: <message>`` and exits with the error's ``exit_code``: 2 when the command line or the
config file is wrong, 1 for everything else (files, data, checkpoints, a training that failed).
Anything that is not a MindcoatError is a bug and keeps its traceback.

This module imports nothing: every layer may raise these.
"""


class MindcoatError(Exception):
    """A problem the user can act on; the message says what is wrong and what to do."""
    exit_code = 1


class UsageError(MindcoatError, ValueError):
    """A command line that cannot work as typed."""
    exit_code = 2


class ConfigError(MindcoatError, ValueError):
    """A configuration value or file that cannot be used."""
    exit_code = 2


class CheckpointError(MindcoatError, ValueError):
    """A weight file that cannot be used."""


class DownloadError(CheckpointError):
    """Weights that could not be fetched or verified; the message says how to use a local
    file instead."""


class DataError(MindcoatError, ValueError):
    """An unusable data folder or image."""


class RunDirError(MindcoatError, ValueError):
    """A run folder that cannot be used as asked."""


class ResumeError(MindcoatError, ValueError):
    """A checkpoint a run cannot be continued from."""


class CheckpointWriteError(MindcoatError, OSError):
    """A file that could not be written (full disk, permissions); the previous file of the same
    name is untouched."""


class NonFiniteLoss(MindcoatError, RuntimeError):
    """The loss became NaN or infinite (not a loss-scale overflow, whose update is skipped)."""


class Interrupted(MindcoatError):
    """Stopped by Ctrl-C (SIGINT); the message says what was saved."""
    exit_code = 130
