"""Errors a user can fix. main.py prints them as one line and exits with their code."""


class UserError(Exception):
    """A problem with the user's input (config, data, paths). Printed without a traceback."""

    exit_code = 1


class ConfigError(UserError):
    """Bad command line or config: unknown key, missing file, unknown mode."""

    exit_code = 2


class DatasetError(UserError):
    """A dataset that cannot be used; the message names the file, the line and the fix."""

    exit_code = 1
