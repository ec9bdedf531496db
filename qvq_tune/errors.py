"""The one error type users can cause, caught once at the CLI boundary.

A `UserError` carries a message that names the file, line or key at fault and what to
do about it. Bugs are not wrapped: they keep their tracebacks.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (path, config, data), reported on one line."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 key: str | None = None):
        self.path, self.line, self.key = path, line, key
        where = ""
        if path is not None:
            where = str(path)
            if line is not None:
                where += f":{line}"
        if key is not None:
            where += f" [{key}]" if where else f"[{key}]"
        self.bare_message = message
        super().__init__(f"{where}: {message}" if where else message)
