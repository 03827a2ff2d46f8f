"""User-facing errors.

Every problem caused by the user's input (a file, a dataset, an option) raises
:class:`MedslimError` with a message that names the file or the option. The CLI
prints that message alone, without a traceback, and exits with ``exit_code``.
"""

from __future__ import annotations


class MedslimError(Exception):
    """A problem with the user's input; the message is shown as is."""

    exit_code = 2


class DataError(MedslimError):
    """A dataset, image, mask or volume that cannot be used."""


class ConfigError(MedslimError):
    """An unknown or invalid option, model name or config key."""


class ArtifactError(MedslimError):
    """A saved model or run folder that cannot be loaded."""


class DownloadError(MedslimError):
    """A dataset download that failed or did not match its checksum."""


class MedslimWarning(UserWarning):
    """Something the user should know that does not stop the command; the CLI prints it as one line."""


def unknown_name(kind: str, name: str, allowed) -> ConfigError:
    """The standard message for a name that is not one of ``allowed``."""
    allowed = sorted(allowed)
    return ConfigError(f"unknown {kind} {name!r}; choose one of: {', '.join(allowed)}")
