"""The errors every checkpoint reader raises."""


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message says which tensors and why."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle asks to import something other than containers and numpy arrays."""
