"""Errors users see. Each message names the file, row or key, what is wrong, and what to do."""


class SmallsecError(Exception):
    """Base of every error the CLI reports as a plain message instead of a traceback."""


class SpecError(SmallsecError):
    """The job spec is invalid: the message lists every problem with its key path."""


class DataError(SmallsecError):
    """An input shard cannot be read (corrupt, wrong columns, unreadable); the message names the file."""


class StageError(SmallsecError):
    """A stage failed or its inputs are missing; the message names the stage."""
