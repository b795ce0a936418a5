"""Errors a user can act on: the CLI prints their message (no traceback) and exits non-zero."""


class RecipeError(Exception):
    """Bad input or configuration, explained in the message (what, where, what to do)."""

    exit_code = 2


FULL = {28: "no space left on the device", 122: "the disk quota is exceeded"}  # ENOSPC, EDQUOT


def full_disk(exc: BaseException) -> RecipeError | None:
    """A write that failed because the disk (or the quota) is full, as an error the user can act
    on; None for any other error. What was being written is never kept half-written: the stages
    write into scratch files and move them into place whole, so a rerun after freeing space redoes it."""
    if not isinstance(exc, OSError) or exc.errno not in FULL:
        return None
    where = f" writing {exc.filename}" if exc.filename else ""
    error = RecipeError(f"{FULL[exc.errno]}{where}: free some space (or set another output folder), then rerun the "
                        "same command; nothing half-written was kept")
    error.exit_code = 1
    return error
