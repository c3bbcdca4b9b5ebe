"""Exception types that mean "the user asked for something that cannot be done" (CLI exit code 1)."""


class UserError(ValueError):
    """A bad argument, file or folder; the message names it and fits on one line."""


def every_rank(err: BaseException) -> BaseException:
    """Mark ``err`` as raised by every rank of a torchrun job together (an outcome they agreed on through a
    collective): the CLI then lets each rank print it before any of them exits."""
    err.recapfast_every_rank = True
    return err


def raised_by_every_rank(err: BaseException) -> bool:
    return bool(getattr(err, "recapfast_every_rank", False))


def one_line(err: BaseException) -> str:
    """``Type: the first line of the message`` of a foreign exception (a SyntaxError with its file and line), for
    a one-line error naming what failed."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, SyntaxError) and err.filename:
        text = f"{err.msg} ({err.filename}, line {err.lineno})"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
