"""Text output neutralises what it did not write.

Filed by subject from a code review's regressions: each test reproduces one
defect found."""

from __future__ import annotations


def test_text_output_neutralises_separators_and_c1_controls():
    from vfio_advisor.sinks.text import clean

    assert clean("HDMI\u2028  Remove-Item\u009b2J\x1b[31m\n") == "HDMI?  Remove-Item?2J?[31m\n"
