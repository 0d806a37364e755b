"""A rank of a shared gloo job (``tests.scaling_out.shared_launch``): run as ``python -m
tests.dist_shared_worker RANK WORLD FOLDER``; the parts it runs are ``scaling_out.SHARED``."""

from __future__ import annotations

from tests.scaling_out import shared_worker_main

if __name__ == "__main__":
    shared_worker_main()
