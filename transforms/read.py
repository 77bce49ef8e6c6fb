"""The shared front of every job: match -> decode -> resample -> segment.

Files up to ``SegmentConfig.split_s`` seconds are decoded whole; longer ones are probed,
cut into work items spread over the workers, and decoded in chunks (``transforms/segment.py``).

The decode stage's Beam steps live here, not in ``transforms/decode.py``: the decoder
processes import that module, and keeping Beam out of it saves each worker process's
decoder start-up the 2.5 s of importing Beam.
"""

from __future__ import annotations

import logging

import apache_beam as beam

from audiotok.transforms import failures, metrics
from audiotok.transforms.decode import DecodeConfig, resample_decoded
from audiotok.transforms.failures import AudiotokError, Failure
from audiotok.transforms.progress import Progress
from audiotok.transforms.records import AudioRef

logger = logging.getLogger(__name__)
from audiotok.transforms.match import MatchAudio, MatchConfig
from audiotok.transforms.segment import PlanLongFiles, SegmentAudio, SegmentConfig, SegmentWorkItems


class ReadSegments(beam.PTransform):
    """Inputs -> ``{"segments": PCollection[Segment], "failures": PCollection[Failure],
    "listed": PCollection[AudioRef], "selected": PCollection[AudioRef]}``.

    Applied to the pipeline, it matches ``match``'s inputs; applied to a PCollection[AudioRef],
    it reads those (``listed`` is then that PCollection). Segments are mono at ``sample_rate``.
    When ``select`` is given (a PTransform over AudioRefs), only the inputs it passes are decoded.

    With ``per_path``, ``segments`` is a tuple of PCollections, one per way segments are made
    (whole files, long files in stretches): the in-process runner holds every element of a
    Flatten in memory, so a job that must not hold every segment's audio applies its next steps
    to each.
    """

    def __init__(self, match: MatchConfig, decode: DecodeConfig, sample_rate: int, segment: SegmentConfig,
                 select: beam.PTransform | None = None, per_path: bool = False):
        super().__init__()
        self.match, self.decode, self.sample_rate, self.segment = match, decode, sample_rate, segment
        self.select = select
        self.per_path = per_path

    def expand(self, pbegin):
        if isinstance(pbegin, beam.pvalue.PBegin):
            matched = pbegin | "MatchAudio" >> MatchAudio(self.match)
        else:
            matched = {"refs": pbegin, "failures": pbegin.pipeline | "NoMatchFailures" >> beam.Create([])}
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
        segments = (segmented.segments, streamed.segments) if self.segment.splits else (segmented.segments,)
        if not self.per_path:
            segments = segments | "AllSegments" >> beam.Flatten() if len(segments) > 1 else segments[0]
        fails = ((matched["failures"], decoded.failures, segmented.failures, *long_fails)
                 | "ReadFailures" >> beam.Flatten())
        return {"segments": segments, "failures": fails, "listed": matched["refs"], "selected": refs}


# ------------------------------------------------------------------ decode


class _DecodeFn(beam.DoFn):
    def __init__(self, config: DecodeConfig):
        self._config = config

    def setup(self) -> None:
        from audiotok.transforms import isolation

        self._progress = Progress("decoded")
        self._decoder = isolation.make_decoder(self._config)

    def process(self, ref: AudioRef):
        try:
            decoded, notes = self._decoder.decode(ref)
        except Exception as e:  # every failure is a record, never a failed bundle
            if not isinstance(e, AudiotokError):
                logger.warning("unexpected %s decoding %s (a bug: please report it): %s", type(e).__name__,
                               failures.redact(failures.printable(ref.uri)), failures.redact(str(e)))
            failure = Failure.from_error(ref.uri, e, "decode")
            metrics.failure(failure.reason, "decode")
            yield beam.pvalue.TaggedOutput("failures", failure)
            return
        for note in notes:
            metrics.counter(f"decode_{note}").inc()
        if getattr(self._decoder, "max_rss_mb", 0):
            metrics.distribution("decoder_max_rss_mb").update(int(self._decoder.max_rss_mb))
        metrics.counter("files_ok").inc()
        metrics.counter("audio_ms").inc(int(round(decoded.duration_s * 1000)))
        self._progress.add(decoded.duration_s)
        yield decoded

    def teardown(self) -> None:
        decoder = getattr(self, "_decoder", None)
        if decoder is not None:
            decoder.close()


class DecodeAudio(beam.PTransform):
    """PCollection[AudioRef] -> Decoded (main, mono at the source rate) and Failure (``failures``)."""

    def __init__(self, config: DecodeConfig):
        super().__init__()
        self.config = config

    def expand(self, refs):
        return refs | "Decode" >> beam.ParDo(_DecodeFn(self.config)).with_outputs("failures", main="decoded")


class Resample(beam.PTransform):
    """PCollection[Decoded] -> Decoded at ``target_rate``."""

    def __init__(self, target_rate: int | None):
        super().__init__()
        self.target_rate = target_rate

    def expand(self, decoded):
        return decoded | "ResampleAudio" >> beam.Map(resample_decoded, self.target_rate)
