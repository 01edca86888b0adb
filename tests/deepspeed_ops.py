"""Build DeepSpeed's CPU shared-memory communication op ahead of the suite.

DeepSpeed compiles this op (C++, about 70 s of one core) the first time a process group starts on CPU, and
caches it in ~/.cache/torch_extensions. On a fresh machine that compile would fall inside the suite's first
DeepSpeed test, on one worker's critical path; `make test` runs this beside ruff and mypy instead, which use
one core. Quiet, and never fatal: without DeepSpeed, a compiler or a CPU-only torch, the tests decide.
"""

from __future__ import annotations

import contextlib
import io
import os


def main() -> None:
    with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
        import torch

        if torch.cuda.is_available():
            return
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        from deepspeed.accelerator import get_accelerator

        builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
        if builder is not None:
            builder.load(verbose=False)


if __name__ == "__main__":
    main()
