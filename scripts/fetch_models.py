#!/usr/bin/env python
"""Fetch SmolLM2-135M-Instruct, Gemma-3-270M and the text corpora into checkpoints/ (idempotent).

Same as `lsmerge fetch`; options: --root DIR, --models smollm2 gemma3, --corpora true|false,
--dtype float32|bfloat16|float16.
"""

from lsmerge.cli import main

if __name__ == "__main__":
    import sys

    main(["fetch", *sys.argv[1:]])
