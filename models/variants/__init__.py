"""Recurrent forecasters beyond a plain stack of cells, each served by numpy one reading at a time.

Every variant has the interface of :class:`models.cells.NetworkWeights` that :class:`models.engine.Engine`
uses (``horizon``, ``state_size``, ``zero_state``, ``step``, ``skip``, ``to_arrays``) and keeps all of
its per-stream memory in the flat ``cell_state`` vector, so the engine, the state coding and the
streaming job serve it unchanged. ``models.networks`` maps a cell name to the class that loads it.
"""
