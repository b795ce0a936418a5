"""Errors a user can act on: the CLI prints their message (no traceback) and exits non-zero."""


class RecipeError(Exception):
    """Bad input or configuration, explained in the message (what, where, what to do)."""

    exit_code = 2
