"""perfwatch's reference benchmark suites: asv benchmark modules for loaders, training and DDP.

Run them with ``perfwatch run --suite quick|ci|full`` or ``asv run`` (which gets the quick grids).
"""
