"""Threads and seeds of ANTs/ITK: the two things a reproducible antspyx run must pin.

Measured on antspyx 0.6.3 (two fresh processes, same inputs, same call):

* **Seeds.** ``ants.registration`` has no ``random_seed`` argument: it takes
  ``**kwargs`` and ignores whatever lands there, and reads the seed from
  ``ants.config._random_seed`` only. Without it antsRegistration seeds its
  metric sampling (also the jittered "regular" sampling) from the clock, so head
  motion differed by 0.01 mm between two identical one-thread runs. A seed of 0
  also means "from the clock" to antsRegistration (the same runs with
  ``--random-seed 0`` differed as much; with 5 they were identical), so
  :func:`ants_seed` maps every seed into 1..2**31-1. :func:`seeded_registration`
  sets that seed for one call and refuses arguments that ``ants.registration``
  would silently drop.
* **Threads.** ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once per process,
  when it first runs a filter; setting the variable later changes nothing. A
  process that had already run ITK with two threads gave a different result on
  every "one-thread" run. :func:`pin_itk_threads` sets the variable and warns
  when a later call asks for another count; the participant level calls it once
  before any node runs, so the nodes run in-process (Linear) and every MultiProc
  worker (the forkserver inherits the environment) start ITK with the same count.

With one thread and one seed, antsRegistration, N4 and resampling are then
bit-identical from run to run. With more threads ITK's metric sums are not
order-stable and the results differ slightly (the README's Reproducibility
section gives the measured spread).
"""
from __future__ import annotations

import inspect
import logging
import os

from dpnbids.exceptions import InputError

LOGGER = logging.getLogger(__name__)

ITK_THREADS_VAR = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"
_PINNED: int | None = None


def pin_itk_threads(omp_nthreads: int) -> int:
    """Give ITK ``omp_nthreads`` threads in this process; return the count in force.

    The first call sets :data:`ITK_THREADS_VAR` (ITK reads it at its first filter, so
    call this before any ``ants`` computation). A later call with another count cannot
    change what ITK already uses: it logs a warning and returns the first count.
    """
    global _PINNED
    count = int(omp_nthreads)
    if count < 1:
        raise InputError(f"omp_nthreads must be >= 1; got {omp_nthreads}. Give "
                         "`omp_nthreads` 1 or more.")
    if _PINNED is None:
        os.environ[ITK_THREADS_VAR] = str(count)
        _PINNED = count
    elif count != _PINNED:
        LOGGER.warning("ITK was given %d thread(s) in this process and reads the count only "
                       "once; %d requested now is ignored (results are bit-reproducible only "
                       "with one thread count per process).", _PINNED, count)
    return _PINNED


def unknown_registration_kwargs(kwargs) -> list[str]:
    """Names in ``kwargs`` that ``ants.registration`` would swallow without using."""
    import ants

    params = inspect.signature(ants.registration).parameters
    known = {name for name, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    return sorted(set(kwargs) - known)


def ants_seed(random_seed: int) -> int:
    """antsRegistration's ``--random-seed`` for ``random_seed``: in 1..2**31-1, never 0
    (which antsRegistration reads as "seed from the clock"); distinct seeds below
    2**31-1 stay distinct."""
    return int(random_seed) % (2**31 - 1) + 1


def seeded_registration(fixed, moving, *, random_seed: int, **kwargs):
    """``ants.registration(fixed, moving, **kwargs)`` with antsRegistration's
    ``--random-seed`` set to :func:`ants_seed` of ``random_seed`` (through
    ``ants.config``, restored after).

    Raises
    ------
    TypeError
        An argument ``ants.registration`` does not know (it would be ignored).
    """
    import ants
    import ants.config

    unknown = unknown_registration_kwargs(kwargs)
    if unknown:
        raise TypeError(f"ants.registration does not take {', '.join(unknown)} and would "
                        "ignore it; see help(ants.registration) for its arguments.")
    previous = ants.config._random_seed
    ants.config._random_seed = ants_seed(random_seed)
    try:
        return ants.registration(fixed=fixed, moving=moving, **kwargs)
    finally:
        ants.config._random_seed = previous
