"""The shared front of every job: match -> decode -> resample -> segment.

Files up to ``SegmentConfig.split_s`` seconds are decoded whole; longer ones are probed,
cut into work items spread over the workers, and decoded in chunks (``transforms/segment.py``).
"""

from __future__ import annotations

import apache_beam as beam

from transforms.decode import DecodeAudio, DecodeConfig, Resample
from transforms.match import MatchAudio, MatchConfig
from transforms.segment import PlanLongFiles, SegmentAudio, SegmentConfig, SegmentWorkItems


class ReadSegments(beam.PTransform):
    """Inputs -> ``{"segments": PCollection[Segment], "failures": PCollection[Failure],
    "listed": PCollection[AudioRef], "selected": PCollection[AudioRef]}``.

    Segments are mono at ``sample_rate``. ``listed`` holds every matched input; when
    ``select`` is given (a PTransform over AudioRefs, e.g. the incremental filter), only the
    inputs it passes are decoded.
    """

    def __init__(self, match: MatchConfig, decode: DecodeConfig, sample_rate: int, segment: SegmentConfig,
                 select: beam.PTransform | None = None):
        super().__init__()
        self.match, self.decode, self.sample_rate, self.segment = match, decode, sample_rate, segment
        self.select = select

    def expand(self, pbegin):
        matched = pbegin | "MatchAudio" >> MatchAudio(self.match)
        refs = matched["refs"] if self.select is None else matched["refs"] | "SelectInputs" >> self.select
        whole = refs
        long_fails = []
        if self.segment.splits:
            planned = refs | "PlanLongFiles" >> PlanLongFiles(self.sample_rate, self.segment, self.decode)
            whole = planned["whole"]
            streamed = planned["items"] | "SegmentLongFiles" >> SegmentWorkItems(self.segment, self.decode)
            long_fails = [planned["failures"], streamed.failures]
        decoded = whole | "DecodeAudio" >> DecodeAudio(self.decode)
        resampled = decoded.decoded | "Resample" >> Resample(self.sample_rate)
        segmented = resampled | "Segment" >> SegmentAudio(self.segment)
        segments = segmented.segments
        if self.segment.splits:
            segments = (segments, streamed.segments) | "AllSegments" >> beam.Flatten()
        fails = ((matched["failures"], decoded.failures, segmented.failures, *long_fails)
                 | "ReadFailures" >> beam.Flatten())
        return {"segments": segments, "failures": fails, "listed": matched["refs"], "selected": refs}
