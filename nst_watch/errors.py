"""Errors that reach the user, each with the exit code the CLI returns.

Every message names the file or key at fault and says how to fix it.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h; systemd units list it in RestartPreventExitStatus


class NstWatchError(Exception):
    """Base for every error nst-watch explains to the user."""

    exit_code = EXIT_FAILURE


class ConfigError(NstWatchError):
    """A config or preset file is invalid. Exit 78 so systemd does not crash-loop."""

    exit_code = EXIT_CONFIG


class WeightsError(NstWatchError):
    """VGG19 weights are missing, corrupt or of the wrong shape."""


class PhotoError(NstWatchError):
    """A photo cannot be read or written.

    `permanent` tells the job ledger whether retrying can help: a corrupt file
    stays corrupt (permanent), a full disk may clear up (transient).
    """

    def __init__(self, path, reason: str, fix: str = "", *, permanent: bool = True):
        self.path = path
        self.reason = reason
        self.fix = fix
        self.permanent = permanent
        text = f"{path}: {reason}"
        if fix:
            text += f" ({fix})"
        super().__init__(text)


class EngineError(NstWatchError):
    """The optimisation failed (for example the loss became non-finite)."""


class PresetError(ConfigError):
    """A preset cannot be used as it stands (for example a style image is missing or too small).

    The preset is at fault, not the photos: the daemon keeps their jobs
    waiting, photos in place, until the preset is fixed.
    """


class MaskError(PhotoError):
    """A mask cannot serve its photo: unreadable, a colour no region names, a region too small, the wrong shape.

    `path` is the mask's. Permanent: retrying the same mask cannot help; a
    replaced mask is a new job.
    """
