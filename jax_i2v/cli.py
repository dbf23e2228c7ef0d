"""What the launch scripts share."""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def exit_on_user_error():
    """Bad input (ValueError, FileNotFoundError, FileExistsError) ends the program with `error: ...` on stderr and
    exit status 2, like argparse, instead of a traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
