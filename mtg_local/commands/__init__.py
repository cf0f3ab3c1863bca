"""Sub-commands of the ``mtg`` CLI, one module each (see ``mtg_local.cli``)."""
