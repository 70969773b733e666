"""Process-level helpers every stage uses: errors, atomic files, threads, device memory, seeds and stops."""
