"""Dead-letter records and reason codes.

Nothing bad stops the job: a pure function raises :class:`AudiotokError` with a reason
code, the DoFn around it turns the error into a :class:`Failure`, which goes to the
``failures`` output and ends as one JSON line under ``OUTPUT/failures/``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from transforms.storage import redact

# Reason codes. Documented in the README; keep the two in step.
EMPTY = "empty"  # zero bytes
TRUNCATED = "truncated"  # a known container whose data ends early
UNSUPPORTED_FORMAT = "unsupported_format"  # no decoder recognises the bytes
HEADER_MISMATCH = "header_mismatch"  # header values that the data cannot back
DECODE_ERROR = "decode_error"  # a decoder failed for another reason
NON_FINITE = "non_finite"  # NaN or Inf samples
TOO_SHORT = "too_short"  # shorter than the minimum segment
TOO_LONG = "too_long"  # longer than the maximum duration
BAD_SAMPLE_RATE = "bad_sample_rate"  # outside the accepted range
TOO_MANY_CHANNELS = "too_many_channels"
TIMEOUT = "timeout"
DECODER_CRASH = "decoder_crash"
READ_ERROR = "read_error"  # the storage could not be read
BAD_MANIFEST = "bad_manifest"  # a manifest line that is not a valid record
TOKENIZER_ERROR = "tokenizer_error"  # a tokenizer failed on a segment
OUT_OF_MEMORY = "out_of_memory"

REASONS: tuple[str, ...] = (
    EMPTY, TRUNCATED, UNSUPPORTED_FORMAT, HEADER_MISMATCH, DECODE_ERROR, NON_FINITE,
    TOO_SHORT, TOO_LONG, BAD_SAMPLE_RATE, TOO_MANY_CHANNELS, TIMEOUT, DECODER_CRASH,
    READ_ERROR, BAD_MANIFEST, TOKENIZER_ERROR, OUT_OF_MEMORY,
)

_MAX_MESSAGE_CHARS = 2000


class AudiotokError(Exception):
    """An input that cannot be processed, with a reason code from :data:`REASONS`."""

    def __init__(self, reason: str, message: str, uri: str | None = None):
        if reason not in REASONS:
            raise ValueError(f"unknown failure reason {reason!r}; known: {', '.join(REASONS)}")
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.uri = uri

    def __str__(self) -> str:
        where = f" ({self.uri})" if self.uri else ""
        return f"{self.reason}: {self.message}{where}"


@dataclasses.dataclass(frozen=True)
class Failure:
    """One dead-letter record: what could not be processed, where, and why."""

    uri: str
    reason: str
    message: str
    stage: str = ""
    start_s: float | None = None
    end_s: float | None = None

    @classmethod
    def from_error(cls, uri: str, error: BaseException, stage: str, **where: Any) -> "Failure":
        if isinstance(error, AudiotokError):
            reason, message = error.reason, error.message
        elif isinstance(error, MemoryError):
            reason, message = OUT_OF_MEMORY, "out of memory"
        else:
            reason = DECODE_ERROR if stage == "decode" else TOKENIZER_ERROR
            message = f"{type(error).__name__}: {error}"
        return cls(uri=uri, reason=reason, message=message[:_MAX_MESSAGE_CHARS], stage=stage, **where)

    def to_json(self) -> str:
        # Messages quote exceptions, which may quote requests: mask credentials on the way out.
        record = {k: redact(v) if isinstance(v, str) else v
                  for k, v in dataclasses.asdict(self).items() if v is not None and v != ""}
        return json.dumps(record, ensure_ascii=False, sort_keys=True)
