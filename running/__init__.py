"""The run machinery below the scripts and tools: errors, arithmetic (numerics), devices,
random state, annealing, what a resume may change, run folders and the paper's grids.
Nothing here imports a top-level module."""
