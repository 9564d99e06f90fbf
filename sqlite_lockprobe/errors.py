"""The one exception type for errors a user can cause (bad file, bad option, bad scenario)."""


class LockprobeError(Exception):
    """A problem with the user's input; the CLI prints it as one line and exits non-zero."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
