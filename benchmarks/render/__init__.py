"""Every generated block of README.md and of the pages under docs/, rendered from the committed results under
results/: ``blocks`` holds the registry of ``(page, block, source files, render function)`` and the marker
format, ``formatting`` the names and number formats every block shares, and one module per subject renders its
blocks (measurement scripts only measure and write results).

    python benchmarks/render            # rewrite every block from its committed sources
    python benchmarks/render --check    # change nothing; exit 1 naming the stale blocks
"""
