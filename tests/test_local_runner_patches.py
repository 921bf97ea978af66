"""The local-runner workarounds in pipeline/job.py keep Beam's behaviour, only cheaper."""

from __future__ import annotations

import numpy as np
import objsize
from apache_beam.runners.worker import statecache

from models.state import StreamState
from pipeline.job import _cheap_state_cache_sizing


def _walked(*objs: object) -> int:
    return objsize.get_deep_size(
        *objs, get_size_func=statecache._size_func, get_referents_func=statecache._get_referents_func,
        filter_func=statecache._filter_func, exclude_modules_globals=False,
    )


def test_cached_stream_states_are_sized_like_objsize_would() -> None:
    _cheap_state_cache_sizing()
    rng = np.random.default_rng(3)
    for season, cells in ((48, 128), (24, 64), (168, 512)):
        state = StreamState(
            readings_seen=100, last_timestamp=1.4e9 + rng.random(), value_mean=rng.random(), value_scale=1 + rng.random(),
            ring=rng.random(season), ring_fill=season, cell_state=rng.random(cells), source_partition=1, source_offset=7,
        )
        estimate, walked = statecache.get_deep_size([state]), _walked([state])
        assert abs(estimate - walked) <= 0.1 * walked, (season, cells, estimate, walked)
    assert statecache.get_deep_size([]) == _walked([])
    assert statecache.get_deep_size(b"x" * 1000) == _walked(b"x" * 1000)  # anything else: objsize, as Beam does


def test_bundles_start_no_state_sampler_thread() -> None:
    import threading

    from apache_beam.runners.worker import statesampler
    from apache_beam.utils.counters import CounterFactory

    from pipeline.job import _no_state_sampler_thread

    _no_state_sampler_thread()
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
