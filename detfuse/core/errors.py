"""Errors caused by the user's input: the CLI prints them without a traceback and exits 2."""


class UserError(Exception):
    """Bad input (dataset, config, search space, checkpoint...). The message names the file, field and fix."""

    exit_code = 2
