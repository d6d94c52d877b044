"""The package's version, the one place it is written (the build reads it; exported models are stamped with it).

A module of its own, importing nothing: the modules that need the version (the stamp, export) import it from here,
not from the package's ``__init__``, whose lazy trainer façade sits above every layer.
"""

__version__ = "0.2.0"
