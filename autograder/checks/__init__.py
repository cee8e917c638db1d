"""One module of checkpoints per chapter; importing this package registers them all."""

from . import ch01_tokenizer  # noqa: F401
