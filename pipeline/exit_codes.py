"""The exit codes of every ``segbeam`` command, in one table (the README's "Bad inputs" lists
them)."""

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    DEAD_LETTERS = 1  # every input a dead letter (run, shard), or some under --fail_on_errors
    USAGE = 2  # a mistake in the command line, its flags or its settings
    ACCOUNTING = 3  # inputs != outputs + dead letters: a defect, please report it
    REGRESSION = 4  # `segbeam report --fail_on_regression` found a regression
    INTERNAL = 5  # an unexpected failure: a defect in segbeam or a library (traceback saved)


class JobFailed(RuntimeError):
    """The job failed while it ran: a worker's error that no input's dead letter could hold (a
    full disk, lost permissions, a defect). Never a usage error, whatever the worker raised:
    one line and exit 5, the traceback saved."""


def usage_error(command: str, error: BaseException) -> int:
    """Says a mistake in one line on stderr and returns ``ExitCode.USAGE``. Cloud Storage
    refusing access is said as such, naming the path where the error does, whichever library
    error carried it (one reads only "Anonymous credentials cannot be refreshed.")."""
    import sys

    from segbeam.storage import access_refusal

    refusal = access_refusal(error)
    if refusal:
        path, reason = refusal
        error = (f"Cloud Storage refused access{f' to {path}' if path else ''}: {reason}; check "
                 f"the credentials (`gcloud auth application-default login`; without any, "
                 f"only public buckets can be read) and the bucket's permissions")
    print(f"segbeam {command}: error: {error}", file=sys.stderr)
    return ExitCode.USAGE
