"""Importing the user module, running its setup(), and finding the functions it serves."""

import importlib
import os
import sys


def extend_path(dirs):
    """Puts ``dirs`` (absolute) at the front of sys.path, the first one first."""
    for d in reversed(dirs or []):
        sys.path.insert(0, os.path.abspath(d))


def load(module_name):
    """Imports ``module_name`` and calls its setup() once, if it has one; returns the module."""
    module = importlib.import_module(module_name)
    setup = getattr(module, "setup", None)
    if callable(setup):
        setup()
    return module


def is_public(name):
    return not name.startswith("_") and name != "setup"


def served_functions(module):
    """The module's public callables defined in the module itself, by name."""
    found = {}
    for name, obj in vars(module).items():
        if is_public(name) and callable(obj) and getattr(obj, "__module__", None) == module.__name__:
            found[name] = obj
    return dict(sorted(found.items()))
