"""The one domain error type: bad input (a file, a flag, a spec key, a model) that the user can fix.

Each package subclasses :class:`InputError` for its inputs (``MaskError``, ``VectorError``, ``SpecError``,
``BundleError``, ...). The CLI prints any of them as ``ERROR rsgen: <argument> '<path>': <what is wrong>;
<how to fix>`` and exits with code 2; it is a ``ValueError``, so Python callers can catch either.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input; the message names the argument (and file), says what is wrong and how to fix it."""
