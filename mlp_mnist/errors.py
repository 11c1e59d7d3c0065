"""The one base class for errors a user can fix: every script prints them as one line and exits 2."""


class UserError(Exception):
  """A problem with the user's input (config, data, workdir, checkpoint, multi-process set-up,
  sweep file); the message says what is wrong and what to do."""
