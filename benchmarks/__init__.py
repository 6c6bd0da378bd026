"""`make bench` (``python -m benchmarks``): the README's promises measured, as ratios where a peer exists."""

# The trainer's process settings (its OpenMP wait policy) come before a benchmark loads torch.
import trashsorter_trainer  # noqa: F401
