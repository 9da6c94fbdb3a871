"""The engine wing: the sweep and search engines, their options and the measuring backend.

Engines take ``(space, settings, store, options, backend)``: a validated space, MeasureSettings,
a Store, one frozen options object per engine (:mod:`.options`) and a
:class:`~explorer.engine.backend.MeasureBackend` (the real measure functions by default).
"""
