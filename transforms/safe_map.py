"""``SafeMap``: a pure function applied to every element, with Beam's own exception handling
routing each element that raises to a dead-letter output instead of failing the run."""

from __future__ import annotations

from typing import Callable

import apache_beam as beam

from segbeam.records import DeadLetter, dead_letter_from_failure
from segbeam.transforms.progress import tally


class SafeMap(beam.PTransform):
    """pcoll -> (results, dead letters). ``fn(element, *args, **kwargs)`` returns one result;
    an exception turns the element into a ``DeadLetter`` naming ``stage`` and the reason."""

    def __init__(self, stage: str, fn: Callable, *args, **kwargs):
        super().__init__()
        self._stage = stage
        self._fn = fn
        self._args = args
        self._kwargs = kwargs

    def expand(self, pcoll):
        good, bad = pcoll | "Apply" >> beam.Map(self._fn, *self._args, **self._kwargs
                                                 ).with_exception_handling()
        dead = bad | "ToDeadLetters" >> beam.Map(_to_dead_letter, self._stage)
        return good, dead


def _to_dead_letter(failure, stage):
    return counted(dead_letter_from_failure(stage, failure))


def counted(letter: DeadLetter) -> DeadLetter:
    """A dead letter, counted in the progress line as it is made (by stage, in Beam's counters,
    it is counted where it is written: ``segbeam.transforms.write.WriteDeadLetters``)."""
    tally("dead")
    return letter
