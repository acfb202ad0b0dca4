"""The time left that long jobs print (``hgan.progress``): seconds, minutes or hours by
size, the same words in training, evaluation and indexing."""
import math

from hgan.progress import duration, eta


def test_a_duration_is_written_in_seconds_minutes_or_hours_by_its_size():
    assert [duration(s) for s in (0, 0.4, 42, 119.4)] == ["0 s", "0 s", "42 s", "119 s"]
    assert [duration(s) for s in (119.6, 120, 210, 7199)] == ["2.0 min", "2.0 min", "3.5 min",
                                                              "120.0 min"]
    assert [duration(s) for s in (7200, 7560, 90000)] == ["2.0 h", "2.1 h", "25.0 h"]
    assert duration(-3) == "0 s"
    assert duration(math.inf) == duration(math.nan) == "unknown"


def test_eta_divides_what_is_left_by_the_rate():
    assert eta(300, 2.5) == "ETA 2.0 min"
    assert eta(84, 2.0) == "ETA 42 s"
    assert eta(10, 0.0) == "ETA unknown"
    assert eta(0, 0.0) == "ETA unknown"
