"""Convert the built-in SmolLM2 (GGUF → safetensors, in the user cache) ahead of the suite.

The conversion takes about 45 s of one core, once per machine; on a fresh machine it would fall inside
whichever test first loads the built-in, and two xdist workers could both start it. `make test` runs this
beside ruff and mypy instead, which use one core. Quiet, and never fatal: should the conversion fail here,
the first test that needs the model converts it again and fails with the real error.
"""

from __future__ import annotations

import contextlib
import io


def main() -> None:
    with (
        contextlib.suppress(Exception),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        from tuneforge import builtin

        builtin.resolve("smollm2-135m-instruct")


if __name__ == "__main__":
    main()
