"""The local-runner workarounds in pipeline/job.py keep Beam's behaviour, only cheaper."""

from __future__ import annotations

import numpy as np
import objsize
from apache_beam.runners.worker import statecache

from pipeline.local_runner import cheap_state_cache_sizing


def _walked(*objs: object) -> int:
    return objsize.get_deep_size(
        *objs,
        get_size_func=statecache._size_func,
        get_referents_func=statecache._get_referents_func,
        filter_func=statecache._filter_func,
        exclude_modules_globals=False,
    )


def test_cached_shard_entries_are_sized_like_objsize_would() -> None:
    cheap_state_cache_sizing()
    rng = np.random.default_rng(3)
    for count, size in ((1, 16), (300, 1500), (5000, 700)):
        entries = [rng.bytes(size + int(rng.integers(0, 50))) for _ in range(count)]
        assert statecache.get_deep_size(entries) == _walked(entries), (count, size)
    assert statecache.get_deep_size([]) == _walked([])
    mixed = [b"x" * 10, (1, 2)]
    assert statecache.get_deep_size(mixed) == _walked(mixed)  # anything else: objsize, as Beam does
    assert statecache.get_deep_size(b"x" * 1000) == _walked(b"x" * 1000)


def test_bundles_startno_state_sampler_thread() -> None:
    import threading

    from apache_beam.runners.worker import statesampler
    from apache_beam.utils.counters import CounterFactory

    from pipeline.local_runner import no_state_sampler_thread

    no_state_sampler_thread()
    sampler = statesampler.StateSampler("stage", CounterFactory())
    threads = threading.active_count()
    for _ in range(3):  # what the bundle processor does per bundle
        sampler.reset()
        sampler.start()
        assert statesampler.get_current_tracker() is sampler and threading.active_count() == threads
        with sampler.scoped_state("step", "process"):
            pass
        sampler.stop_if_still_running()
        assert statesampler.get_current_tracker() is None and sampler.finished
    assert sampler.get_info().transition_count > 0
