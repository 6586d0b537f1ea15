"""The exit codes of every ``segbeam`` command, in one table (the README's "Bad inputs" lists
them)."""

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    DEAD_LETTERS = 1  # some inputs became dead letters and --fail_on_errors was given
    USAGE = 2  # a mistake in the command line, its flags or its settings
    ACCOUNTING = 3  # inputs != outputs + dead letters: a defect, please report it
    REGRESSION = 4  # `segbeam report --fail_on_regression` found a regression
    INTERNAL = 5  # an unexpected failure: a defect in segbeam or a library (traceback saved)


class JobFailed(RuntimeError):
    """The job failed while it ran: a worker's error that no input's dead letter could hold (a
    full disk, lost permissions, a defect). Never a usage error, whatever the worker raised:
    one line and exit 5, the traceback saved."""
