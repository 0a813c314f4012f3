"""The errors a user can cause or meet; the command-line tools print each as one `error: ...` line.

Both kinds keep a built-in base (`ValueError`, `FileNotFoundError`, `RuntimeError`), so library callers
can catch them as usual.
"""


class BwlmError(Exception):
  """An error of bwlm-jax itself (not a bug): the message says what to change. Exit status 1."""
  exit_status = 1


class UsageError(BwlmError, ValueError):
  """Bad input: a config field, flag, file or folder that is wrong. Raised before training. Exit status 2."""
  exit_status = 2


class MissingFileError(BwlmError, FileNotFoundError):
  """A file or folder the input names does not exist. Exit status 2."""
  exit_status = 2


class RunError(BwlmError, RuntimeError):
  """A run that cannot go on: non-finite loss, no readable checkpoint, a failed save. Exit status 1."""


class SaveError(RunError):
  """A checkpoint could not be saved. The process leaves at once after its error line: the checkpoint
  library's background threads would otherwise print tracebacks after it."""


class WriteError(RunError):
  """A result file could not be written (a permission, a read-only mount, a full disk). Exit status 1."""


class CandidatesFailed(BwlmError):
  """A study finished, but some of its candidates diverged or could not run: they are in its table as failed,
  never chosen, and the others were compared and chosen as usual. Exit status 3."""
  exit_status = 3


class Interrupted(BaseException):
  """The step budget (or a SIGTERM) ended a run early, with nothing unfinished written; a rerun resumes.

  Exit status 143, the conventional status after SIGTERM. A BaseException, like KeyboardInterrupt: a
  SIGTERM can land inside code that catches `Exception` (retrying a damaged checkpoint, say), which must
  not take the stop for a failure of its own."""
  exit_status = 143
