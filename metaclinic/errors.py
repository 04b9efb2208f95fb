"""Errors about the user's input (data, configuration), shown without a traceback by the command line."""


class DataError(ValueError):
    """The data or the data configuration is not what metaclinic expects; the message says what to change."""


class MissingDataError(DataError, FileNotFoundError):
    """A data file is missing and could not be fetched."""
