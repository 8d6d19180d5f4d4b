"""A module that fails when imported: lint reports why instead of crashing."""

raise RuntimeError("this module cannot be imported")
