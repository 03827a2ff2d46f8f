"""How a benchmark script ends: medslim's own errors as one clear line and exit code 2, not a traceback."""

from __future__ import annotations

import sys


def exit_code(main) -> int:
    """``main()``'s exit code; a :class:`medslim.errors.MedslimError` (bad data path, config, run) printed plainly."""
    from medslim.errors import MedslimError

    try:
        return main()
    except MedslimError as err:
        print(f"{sys.argv[0]}: error: {err}", file=sys.stderr)
        return 2
