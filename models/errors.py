"""Errors shared by the command-line front ends."""


class UsageError(Exception):
    """An error the user can fix (bad file, bad flag); printed as one line, exit status 2."""
