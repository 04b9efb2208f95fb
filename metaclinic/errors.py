"""Errors the command line shows as one line without a traceback: the message says what to change."""


class MetaclinicError(Exception):
    """An error whose message is complete for the user; the command line prints it without a traceback."""


class DataError(MetaclinicError, ValueError):
    """The data or the data configuration is not what metaclinic expects; the message says what to change."""


class MissingDataError(DataError, FileNotFoundError):
    """A data file is missing and could not be fetched."""


class WriteError(MetaclinicError, OSError):
    """A file of the run (checkpoint, report, config, plot) could not be written: the path and the reason."""
