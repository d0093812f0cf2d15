"""The one exception type users see: a one-line message naming the file or argument and the fix."""


class HarnessError(Exception):
    """A user-facing failure. Entry points print ``error: <message>`` and exit with status 2."""


def one_line(exc: BaseException) -> str:
    """A library exception's whole message on one line (its first line is often only a preamble,
    e.g. transformers' tokenizer errors put the cause on the following lines)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text or type(exc).__name__
