"""Hydra configuration of the explorer's commands (``sweep.yaml``) and its structured schema.

The package is the primary config directory (``pkg://explorer.conf``); the named search spaces
(``search_spaces/*.yaml``) join the ``space`` config group at start-up, see
:func:`explorer.conf.schema.register_spaces`.
"""
