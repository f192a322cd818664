"""The exception tree. The CLI catches AutotuneError, prints one line and exits with its code.

Two exceptions outside the tree are internal and never reach a user as themselves:
`subprocesses.ChildFailed` (a child process failed; callers turn it into one of these) and
`models.tasks.TaskMetricError` (a task metric failed; the worker stores it as the trial's failure)."""

from __future__ import annotations


class AutotuneError(Exception):
    """Root of every error autotune reports to a user."""

    exit_code = 1


class UsageError(AutotuneError):
    """A command line or API call that cannot be carried out as asked."""

    exit_code = 2


class SpecError(UsageError):
    """A spec that is malformed: names the file, the field path, what is wrong, what is allowed."""

    def __init__(self, file: str, path: str, problem: str) -> None:
        self.file = file
        self.path = path
        self.problem = problem
        where = f"{file}: {path}: " if path else f"{file}: "
        super().__init__(where + problem)


class StudyNotFound(UsageError):
    """A study name that the storage does not hold."""


class UnsupportedConfig(AutotuneError):
    """Raised inside a worker when a config turns out to be unsupported after setup began.

    `refused`: knob -> value that the engine itself refused whatever the other knobs are (vLLM's
    block_size 16 on CPU); the driver then refuses that value free for the rest of the study."""

    def __init__(self, message: str, refused: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.refused = dict(refused or {})
