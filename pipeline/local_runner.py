"""Everything this job does only because it runs on Beam's in-process local runner (FnApiRunner).

The local runner runs every stage in the launcher's own process. That makes two things possible
that no distributed runner offers, and makes four costs of Beam 2.77's local runner ours to work
around; all of them live here, and :func:`pipeline.job.run` applies them only when
:func:`pipeline.options.is_local_runner` says so:

* the graceful stop: SIGTERM sets a flag in this process (:func:`request_stop`) that the source reads
  (:class:`~pipeline.kafka_source.ReadPartitions` finishes its restrictions, the pipeline drains, the
  sink flushes and commits). On Flink the source runs in SDK workers the signal never reaches: there
  the launcher cancels the job (or Flink's own stop-with-savepoint is used), see deploy/flink/README.md;
* :func:`apply_patches`: monitoring infos, state cache sizing and the state sampler thread, patched
  in Beam's worker modules of this process (harmless elsewhere, but only needed here);
* :func:`freeze_startup_objects`: one process that lives as long as the job.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

__all__ = [
    "apply_patches",
    "cheap_state_cache_sizing",
    "freeze_startup_objects",
    "no_state_sampler_thread",
    "request_stop",
    "reset_stop",
    "stop_monitoring_info_growth",
    "stop_requested",
]

log = logging.getLogger("rnncast.serve")

_STOP = threading.Event()


def request_stop() -> None:
    """Asks every partition reader in this process to finish (the local runner's graceful stop)."""
    _STOP.set()


def reset_stop() -> None:
    """Clears a previous stop request (a new job in the same process)."""
    _STOP.clear()


def stop_requested() -> bool:
    return _STOP.is_set()


def apply_patches() -> None:
    """The three Beam worker patches below (idempotent)."""
    stop_monitoring_info_growth()
    cheap_state_cache_sizing()
    no_state_sampler_thread()


def stop_monitoring_info_growth() -> None:
    """Works around unbounded memory growth of Beam 2.77's FnApiRunner in an unbounded pipeline.

    After every bundle the FnApiRunner sets each stage's monitoring infos to
    ``consolidate_monitoring_infos(itertools.chain(new, previous))``, and that function returns a
    lazy generator: every bundle nests one more generator around all earlier bundles' results, so
    nothing is ever freed (and each consolidation gets slower). With a source that checkpoints
    several times a second the job grew by 7-10 MB a minute even when idle. Materializing the
    consolidated infos as a list keeps one small list per stage (measured: RSS flat, and Beam's
    own metrics unchanged).
    """
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    original = getattr(fn_runner, "consolidate_monitoring_infos", None)
    if original is None:  # a newer Beam: nothing to patch (watch the job's memory over a few idle minutes)
        log.warning("Beam's FnApiRunner changed: the monitoring-info workaround was not applied")
    elif not getattr(original, "_rnncast_materialized", False):

        def consolidate_to_list(monitoring_infos: Any) -> list[Any]:
            return list(original(monitoring_infos))

        consolidate_to_list._rnncast_materialized = True  # type: ignore[attr-defined]
        fn_runner.consolidate_monitoring_infos = consolidate_to_list


def cheap_state_cache_sizing() -> None:
    """Stops Beam's state cache from walking objects to size each state write (local runner).

    Beam 2.77's ``statecache.get_deep_size`` calls ``objsize.get_deep_size`` with its default
    ``exclude_modules_globals``, which first walks the globals of every loaded module (~1,500 in this
    job) to exclude them: ~0.66 ms per committed state, a third of the job's CPU at saturation when
    states were kept per stream (py-spy, benchmarks/README.md). Our states hold no module globals, so
    that walk is skipped; and the job's cached values, lists of bytes (a shard's bag entries, its
    version token), are sized from ``sys.getsizeof`` of each item, which is what objsize would find.
    Every cached append re-sizes the whole list, so this matters more the larger a shard's bag grows.
    """
    import sys

    from apache_beam.runners.worker import statecache

    original = statecache.get_deep_size
    if getattr(original, "_rnncast_cheap", False):
        return

    def walked_size(*objs: Any) -> int:
        return statecache.objsize.get_deep_size(
            *objs,
            get_size_func=statecache._size_func,
            get_referents_func=statecache._get_referents_func,
            filter_func=statecache._filter_func,
            exclude_modules_globals=False,
        )

    getsizeof = sys.getsizeof

    def get_deep_size(*objs: Any) -> int:
        if len(objs) == 1 and type(objs[0]) is list and all(type(item) is bytes for item in objs[0]):
            return getsizeof(objs[0]) + sum(map(getsizeof, objs[0]))
        return walked_size(*objs)

    get_deep_size._rnncast_cheap = True  # type: ignore[attr-defined]
    statecache.get_deep_size = get_deep_size


def no_state_sampler_thread() -> None:
    """Stops every bundle from starting and joining a Beam state-sampler thread (local runner).

    Each bundle of each stage starts a ``StateSampler`` thread that sleeps in growing steps (2 ms x
    1.2 per step, up to 200 ms) and joins it at the bundle's end, so every bundle waits for the rest
    of the sampler's current sleep and then for the GIL to let the thread exit: with three stages per
    source checkpoint that was the largest item of the main thread's time at half load (py-spy
    ``--idle``: 14% in ``Thread.join`` of the sampler; still 11% with a 5 ms cap on the sleep). The
    sampler only feeds Beam's per-step time counters and stuck-bundle ("lull") logging, which this
    job does not export; without the thread those counters stay at zero. Everything else about the
    tracker (current state, transitions) is unchanged.
    """
    from apache_beam.runners.worker import statesampler

    sampler = statesampler.StateSampler
    if getattr(sampler.start, "_rnncast_threadless", False):
        return
    if not all(hasattr(sampler, name) for name in ("start", "stop", "stop_if_still_running", "reset")):
        log.warning("Beam's StateSampler changed: the sampler-thread workaround was not applied")
        return

    def start(self: Any) -> None:
        self.tracked_thread = threading.current_thread()
        statesampler.set_current_tracker(self)
        self.started = True

    def stop(self: Any) -> None:
        statesampler.set_current_tracker(None)
        self.finished = True

    start._rnncast_threadless = True  # type: ignore[attr-defined]
    sampler.start = start
    sampler.stop = stop


def freeze_startup_objects() -> None:
    """Moves everything alive before the pipeline starts out of the garbage collector's reach.

    The job's imports (Beam, kafka-python, numpy, prometheus) leave >110,000 objects that live as long as
    the process; every full collection re-scanned them: 55-70 ms pauses every few seconds at half load
    (gc.callbacks probe), a visible part of the p99 latency. ``gc.freeze()`` (the documented
    pre-fork/long-lived-server idiom) keeps them out of later collections: full collections then took
    under 20 ms. Cycles created later are still collected.
    """
    import gc

    gc.collect()
    gc.freeze()
