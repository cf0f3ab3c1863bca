"""The built-in tasks: one task file each (``NAME.yaml``), or one Python file (``NAME.py``).

The registry (``mtg_local.tasks.registry``) lists this folder: a new built-in is a new
file here. A task file is read like a user's (``docs/tasks.md`` "Your own task"); one
whose task needs Python names it with ``python: module:callable``. A ``NAME.py`` file
defines ``TASK`` -- a ``Task`` subclass or a callable returning a ``Task`` (keyword
arguments it may take: ``data_file``, ``seed``, ``strict``) -- and may define
``ALIASES`` (other names) and ``GENERATED = True`` (it makes its own data).
"""
