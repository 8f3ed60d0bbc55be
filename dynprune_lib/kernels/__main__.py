"""``python -m dynprune_lib.kernels``: compile the C++ kernels for this machine (the README's set-up runs it)."""

from .native import main

main()
