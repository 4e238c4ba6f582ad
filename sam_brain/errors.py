"""One error hierarchy for SAM Brain.

Everything the daemon, CLI or API reports to a user is a `SamBrainError`; foreign exceptions are
wrapped at the boundary (`raise ... from err`). Each class carries the CLI exit code and the HTTP
status it maps to, so both front ends translate errors the same way.
"""

from __future__ import annotations


class SamBrainError(Exception):
    """Base class: a problem with a clear one-line message for the user."""

    exit_code = 1
    http_status = 500


class ConfigError(SamBrainError):
    """The config file (or an override) is invalid; lists every problem at once."""

    exit_code = 2
    http_status = 400

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        detail = "; ".join(self.problems)
        super().__init__(f"{source}: {detail}")


class BadRequest(SamBrainError):
    """A request to the API or CLI is malformed (bad JSON, unknown field)."""

    exit_code = 2
    http_status = 400


class NotFound(SamBrainError):
    """A named thing (version, run, sample) does not exist."""

    exit_code = 3
    http_status = 404


class Conflict(SamBrainError):
    """The action conflicts with current state (training already running, nothing to roll back to)."""

    exit_code = 4
    http_status = 409


class BackendUnavailable(SamBrainError):
    """A training backend cannot run here (library missing, unsupported option)."""

    exit_code = 5
    http_status = 503


class ModelUnavailable(SamBrainError):
    """A base model is neither on disk nor fetchable (offline, unknown id)."""

    exit_code = 5
    http_status = 503


class CollectorFailed(SamBrainError):
    """A collector could not read its source; the daemon logs it and carries on."""

    exit_code = 6
    http_status = 500


class TrainingFailed(SamBrainError):
    """A training run ended without a usable adapter (crash, OOM, NaN loss, cancel)."""

    exit_code = 7
    http_status = 500


class WorkerKilled(TrainingFailed):
    """The training process died from a signal (the OOM killer, kill -9): its checkpoint
    survives, so the retry continues the run."""


class TrainingCancelled(TrainingFailed):
    """A training run stopped because a user asked it to (not retried)."""

    def __init__(self, message: str = "cancelled") -> None:
        super().__init__(message)


class PromotionRejected(SamBrainError):
    """A candidate adapter failed its checks and was not deployed."""

    exit_code = 8
    http_status = 409


class DaemonUnreachable(SamBrainError):
    """The CLI needs the daemon for this command and none answers."""

    exit_code = 9
    http_status = 503


class AlreadyRunning(SamBrainError):
    """Another daemon holds this home's lock."""

    exit_code = 10
    http_status = 409


class ExportFailed(SamBrainError):
    """An export could not be built or did not verify; nothing was written to its destination."""

    exit_code = 11
    http_status = 500


class StateDamaged(SamBrainError):
    """A file of the home (state.db, the pool) is damaged; the message names the recovery."""

    exit_code = 12
    http_status = 503


class TeacherError(SamBrainError):
    """A teacher could not answer: no API key, an unreachable server, a refused request.

    Messages name the provider, the address or the environment variable, never the key itself.
    """

    exit_code = 13
    http_status = 502


class BudgetExhausted(TeacherError):
    """The day's teacher budget (`teacher.max_usd_per_day`) is spent; the job resumes tomorrow."""

    exit_code = 14
    http_status = 429
