"""`make bench` (``python -m benchmarks``): the README's promises measured, as ratios where a peer exists."""
