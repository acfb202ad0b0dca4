"""How a long job says how far it is: one way to write the time left, shared by training's
step lines (``hgan.training.loop.progress_line``), evaluation's encoding and scoring lines
(``hgan.evaluation.encode.Progress``) and the gallery indexer's lines
(``hgan.serving.searcher``)."""
import math


def duration(seconds: float) -> str:
    """``42 s`` under two minutes, ``3.5 min`` under two hours, ``2.1 h`` from there;
    ``unknown`` for a time that is not finite (no rate yet)."""
    if not math.isfinite(seconds):
        return "unknown"
    seconds = max(float(seconds), 0.0)
    if seconds < 119.5:  # what rounds to 120 s is written 2.0 min
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def eta(left: float, rate: float) -> str:
    """``ETA <duration>`` of ``left`` items at ``rate`` items a second."""
    return "ETA " + duration(left / rate if rate > 0 else math.inf)
