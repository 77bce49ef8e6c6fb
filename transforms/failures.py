"""Dead-letter records, reason codes, and redaction of secrets.

Nothing bad stops the job: a pure function raises :class:`AudiotokError` with a reason
code, the DoFn around it turns the error into a :class:`Failure`, which goes to the
``failures`` output and ends as one JSON line under ``OUTPUT/failures/``.

Every URI and message that reaches a failure record goes through :func:`redact` first, so
credentials in URLs (``s3://KEY:SECRET@bucket/x``, signed query strings) never land in the
dataset or in logs. The codes are documented in the README ("Bad input"); keep the two in step.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

# Reason codes. Documented in README.md ("Bad input"); tests/transforms/test_hostile_inputs.py checks.
EMPTY = "empty"  # zero bytes, or a valid header with no samples
TRUNCATED = "truncated"  # a known container whose data ends early
UNSUPPORTED_FORMAT = "unsupported_format"  # no decoder recognises the bytes
HEADER_MISMATCH = "header_mismatch"  # header values that the data cannot back
DECODE_ERROR = "decode_error"  # a decoder failed for another reason
NON_FINITE = "non_finite"  # NaN or Inf samples
OUT_OF_RANGE = "out_of_range"  # finite samples beyond [-1, 1] (float formats)
SILENT = "silent"  # no sample above the silence threshold
CLIPPED = "clipped"  # too many samples at full scale
TOO_SHORT = "too_short"  # shorter than the minimum segment
TOO_LONG = "too_long"  # longer than the maximum duration, or than the decode memory guard
BAD_SAMPLE_RATE = "bad_sample_rate"  # outside the accepted range
TOO_MANY_CHANNELS = "too_many_channels"
TIMEOUT = "timeout"  # decoding took longer than the per-file limit
DECODER_CRASH = "decoder_crash"  # the decoder process died (segfault, abort, killed)
READ_ERROR = "read_error"  # the storage could not be read
BAD_NAME = "bad_name"  # a file name that metadata cannot carry (not UTF-8)
NOT_A_FILE = "not_a_file"  # a FIFO, device or socket: reading it may block forever
KEY_COLLISION = "key_collision"  # another input's samples would get the same keys
BAD_MANIFEST = "bad_manifest"  # a manifest line that is not a valid record
TOKENIZER_ERROR = "tokenizer_error"  # a tokenizer failed on a segment
OUT_OF_MEMORY = "out_of_memory"

REASONS: tuple[str, ...] = (
    EMPTY, TRUNCATED, UNSUPPORTED_FORMAT, HEADER_MISMATCH, DECODE_ERROR, NON_FINITE, OUT_OF_RANGE,
    SILENT, CLIPPED, TOO_SHORT, TOO_LONG, BAD_SAMPLE_RATE, TOO_MANY_CHANNELS, TIMEOUT, DECODER_CRASH,
    READ_ERROR, BAD_NAME, NOT_A_FILE, KEY_COLLISION, BAD_MANIFEST, TOKENIZER_ERROR, OUT_OF_MEMORY,
)

_MAX_MESSAGE_CHARS = 2000



def redact(text: str, uri: str | None = None) -> str:
    """:func:`audiotok.transforms.storage.redact`: ``text`` with credentials masked, those of ``uri`` too."""
    from audiotok.transforms import storage  # here: storage is heavier, and failures must stay importable alone

    return storage.redact(text, uri=uri)


def is_transient(error: BaseException | None) -> bool:
    """:func:`audiotok.transforms.storage.is_transient` (False for None)."""
    if error is None:
        return False
    from audiotok.transforms import storage

    return storage.is_transient(error)


def printable(text: str) -> str:
    """``text`` as valid UTF-8: bytes that are not (file names read with ``surrogateescape``)
    become ``\\xNN`` escapes, so JSON writers never fail on them."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "backslashreplace")
        return raw.decode("utf-8", "backslashreplace")


class AudiotokError(Exception):
    """An input that cannot be processed, with a reason code from :data:`REASONS`.

    ``transient``: the cause may pass (the storage was unreachable, throttled, timing out):
    the input is not counted as processed and the next refresh tries it again. Unless given,
    it is read off the error's cause (``raise AudiotokError(...) from storage_error``).
    """

    def __init__(self, reason: str, message: str, uri: str | None = None, transient: bool | None = None):
        if reason not in REASONS:
            raise ValueError(f"unknown failure reason {reason!r}; known: {', '.join(REASONS)}")
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.uri = uri
        self._transient = transient

    @property
    def transient(self) -> bool:
        if self._transient is not None:
            return self._transient
        return self.reason in (READ_ERROR, TIMEOUT) and is_transient(self.__cause__)

    def __str__(self) -> str:
        where = f" ({self.uri})" if self.uri else ""
        return redact(printable(f"{self.reason}: {self.message}{where}"), self.uri)


@dataclasses.dataclass(frozen=True)
class Failure:
    """One dead-letter record: what could not be processed, where, and why.

    ``uri`` and ``message`` are redacted and made valid UTF-8 when the record is built.
    """

    uri: str
    reason: str
    message: str
    stage: str = ""
    start_s: float | None = None
    end_s: float | None = None
    transient: bool = False

    def __post_init__(self) -> None:
        raw_uri = str(self.uri)
        object.__setattr__(self, "uri", redact(printable(raw_uri)))
        object.__setattr__(self, "message", redact(printable(str(self.message)), raw_uri)[:_MAX_MESSAGE_CHARS])

    @classmethod
    def from_error(cls, uri: str, error: BaseException, stage: str, **where: Any) -> "Failure":
        transient = False
        if isinstance(error, AudiotokError):
            reason, message, transient = error.reason, error.message, error.transient
        elif isinstance(error, MemoryError):
            reason, message = OUT_OF_MEMORY, "out of memory"
        elif is_transient(error):  # a storage error that escaped as itself
            reason, message, transient = READ_ERROR, f"{type(error).__name__}: {error}", True
        else:
            reason = DECODE_ERROR if stage == "decode" else TOKENIZER_ERROR
            message = f"{type(error).__name__}: {error}"
        return cls(uri=uri, reason=reason, message=message, stage=stage, transient=transient, **where)

    def to_json(self) -> str:
        record = {k: v for k, v in dataclasses.asdict(self).items() if v is not None and v != "" and v is not False}
        return json.dumps(record, ensure_ascii=False, sort_keys=True)
