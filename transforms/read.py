"""The shared front of every job: match -> decode -> segment, at each file's own rate.

One decode step opens each input once, in the decoder (behind its process boundary): files up
to ``SegmentConfig.split_s`` seconds come out decoded whole; longer ones come out as work items
(the decoder planned them), spread over the workers and decoded in stretches by the decoder
again (``transforms/segment.py``). Nothing is resampled here: segments keep the decoded source
rate, and each tokenizer resamples them once, straight to its own rate
(``transforms/tokenize.py``), so a stream never depends on which other tokenizers share the run.

The decode stage's Beam steps live here, not in ``transforms/decode.py``: the decoder
processes import that module, and keeping Beam out of it saves each worker process's
decoder start-up the 2.5 s of importing Beam.
"""

from __future__ import annotations

import collections
import logging

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from audiotok.transforms import failures, metrics, segment
from audiotok.transforms.decode import DecodeConfig, Plan, SplitConfig
from audiotok.transforms.failures import AudiotokError, Failure
from audiotok.transforms.match import MatchAudio, MatchConfig
from audiotok.transforms.progress import Progress
from audiotok.transforms.records import AudioRef
from audiotok.transforms.segment import SegmentAudio, SegmentConfig, SegmentWorkItems

logger = logging.getLogger(__name__)


class ReadSegments(beam.PTransform):
    """Inputs -> ``{"segments": PCollection[Segment], "failures": PCollection[Failure],
    "listed": PCollection[AudioRef], "selected": PCollection[AudioRef]}``.

    Applied to the pipeline, it matches ``match``'s inputs; applied to a PCollection[AudioRef],
    it reads those (``listed`` is then that PCollection). Segments are mono at their source's
    rate. When ``select`` is given (a PTransform over AudioRefs), only the inputs it passes are
    decoded.

    With ``per_path``, ``segments`` is a tuple of PCollections, one per way segments are made
    (whole files, long files in stretches): the in-process runner holds every element of a
    Flatten in memory, so a job that must not hold every segment's audio applies its next steps
    to each.
    """

    def __init__(self, match: MatchConfig, decode: DecodeConfig, segment: SegmentConfig,
                 select: beam.PTransform | None = None, per_path: bool = False):
        super().__init__()
        self.match, self.decode, self.segment = match, decode, segment
        self.select = select
        self.per_path = per_path

    def expand(self, pbegin):
        if isinstance(pbegin, beam.pvalue.PBegin):
            matched = pbegin | "MatchAudio" >> MatchAudio(self.match)
        else:
            matched = {"refs": pbegin, "failures": pbegin.pipeline | "NoMatchFailures" >> beam.Create([])}
        refs = matched["refs"] if self.select is None else matched["refs"] | "SelectInputs" >> self.select
        decoded = refs | "DecodeAudio" >> DecodeAudio(self.decode, self.segment.split_config())
        segmented = decoded.decoded | "Segment" >> SegmentAudio(self.segment)
        segments, fails = [segmented.segments], [matched["failures"], decoded.failures, segmented.failures]
        if self.segment.splits:
            items = decoded.items | "SpreadWorkItems" >> beam.Reshuffle()
            streamed = items | "SegmentLongFiles" >> SegmentWorkItems(self.segment, self.decode)
            segments.append(streamed.segments)
            fails.append(streamed.failures)
        segments = tuple(segments)
        if not self.per_path:
            segments = segments | "AllSegments" >> beam.Flatten() if len(segments) > 1 else segments[0]
        return {"segments": segments, "failures": tuple(fails) | "ReadFailures" >> beam.Flatten(),
                "listed": matched["refs"], "selected": refs}


# ------------------------------------------------------------------ decode


class _DecodeFn(beam.DoFn):
    """Opens each input in the decoder; with process isolation, ``decoder_processes`` inputs are
    in flight at a time, so the decoders work while this thread runs the steps fused after this
    one on the inputs already decoded. What is in flight when the bundle ends comes out then."""

    def __init__(self, config: DecodeConfig, split: SplitConfig | None):
        self._config, self._split = config, split

    def setup(self) -> None:
        from audiotok.transforms import interpreter, isolation

        interpreter.freeze_at_exit()  # a worker process exits sooner (once per process)
        self._progress = Progress("decoded")
        count = self._config.decoder_processes if self._config.isolation == "process" else 1
        self._decoders = [isolation.make_decoder(self._config, self._split) for _ in range(count)]

    def start_bundle(self) -> None:
        self._in_flight: collections.deque = collections.deque()  # (decoder, ref), oldest first

    def process(self, ref: AudioRef):
        # The oldest answer is collected, and only then the next input submitted, before anything
        # is emitted: the steps fused after this one run when it yields, and the decoders must be
        # busy meanwhile.
        ready = list(self._finish_oldest()) if len(self._in_flight) == len(self._decoders) else []
        decoder = next(d for d in self._decoders if not d.busy)
        try:
            decoder.submit(ref)
            self._in_flight.append((decoder, ref))
        except AudiotokError as e:
            ready.extend(self._failed(ref, e))
        yield from ready

    def finish_bundle(self):
        while self._in_flight:
            for out in self._finish_oldest():
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(out.tag, GlobalWindows.windowed_value(out.value))
                else:
                    yield GlobalWindows.windowed_value(out)

    def _finish_oldest(self):
        decoder, ref = self._in_flight.popleft()
        try:
            opened = decoder.collect()
            items = segment.work_items(ref, opened) if isinstance(opened, Plan) else None
        except Exception as e:  # every failure is a record, never a failed bundle
            yield from self._failed(ref, e)
            return
        if getattr(decoder, "max_rss_mb", 0):
            metrics.distribution("decoder_max_rss_mb").update(int(decoder.max_rss_mb))
        if items is not None:
            yield from self._planned(ref, opened, items)
            return
        decoded, notes = opened
        for note in notes:
            metrics.counter(f"decode_{note}").inc()
        metrics.counter("files_ok").inc()
        metrics.counter("audio_ms").inc(int(round(decoded.duration_s * 1000)))
        self._progress.add(decoded.duration_s)
        yield decoded

    @staticmethod
    def _failed(ref: AudioRef, e: Exception):
        failure = Failure.from_error(ref.uri, e, "decode")
        if failure.transient:
            logger.warning("could not read %s (the storage may be unavailable; the next --incremental tries "
                           "again): %s", failure.uri, " ".join(failure.message.split())[:300])
        elif not isinstance(e, AudiotokError):
            logger.warning("unexpected %s decoding %s (a bug: please report it): %s", type(e).__name__,
                           failures.redact(failures.printable(ref.uri)), failures.redact(str(e)))
        metrics.failure(failure.reason, "decode")
        yield beam.pvalue.TaggedOutput("failures", failure)

    def _planned(self, ref: AudioRef, plan: Plan, items: list):
        for note in plan.notes:
            metrics.counter(f"decode_{note}").inc()
        metrics.counter("long_files").inc()
        metrics.counter("work_items").inc(len(items))
        duration = plan.probe.duration_s if plan.frames is None else plan.frames / plan.probe.sample_rate
        logger.info("%s: %s s in %d work item(s)", failures.redact(failures.printable(ref.uri)),
                    "?" if duration is None else f"{duration:.0f}", len(items))
        for item in items:
            yield beam.pvalue.TaggedOutput("items", item)

    def teardown(self) -> None:
        for decoder in getattr(self, "_decoders", ()):
            decoder.close()


class DecodeAudio(beam.PTransform):
    """PCollection[AudioRef] -> Decoded (``decoded``: short files, mono at the source rate),
    WorkItem (``items``: the stretches of long files, when ``split`` is given) and Failure
    (``failures``). Each input is opened once, by the decoder ``config.isolation`` asks for."""

    def __init__(self, config: DecodeConfig, split: SplitConfig | None = None):
        super().__init__()
        self.config, self.split = config, split

    def expand(self, refs):
        return refs | "Decode" >> beam.ParDo(_DecodeFn(self.config, self.split)).with_outputs(
            "failures", "items", main="decoded")
