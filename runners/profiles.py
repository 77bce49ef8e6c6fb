"""Named runner profiles -> Beam pipeline flags.

A profile supplies defaults; a flag the user gives wins over the profile's.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

# The Python DirectRunner first tries to download the Prism runner; FnApiRunner is the
# engine it falls back to, without the download.
PROFILES: dict[str, tuple[str, ...]] = {
    "direct": ("--runner=FnApiRunner",),
    "direct-multiprocess": ("--runner=FnApiRunner", "--direct_running_mode=multi_processing",
                            "--direct_num_workers=2"),
}


def _flag_name(flag: str) -> str:
    return flag.split("=", 1)[0].lstrip("-").replace("-", "_")


def beam_flags(profile: str, user_flags: list[str]) -> list[str]:
    """The profile's flags that the user did not give, followed by the user's flags."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    given = {_flag_name(f) for f in user_flags if f.startswith("--")}
    return [f for f in PROFILES[profile] if _flag_name(f) not in given] + list(user_flags)


def pipeline_options(profile: str, user_flags: list[str]) -> PipelineOptions:
    flags = beam_flags(profile, user_flags)
    options = PipelineOptions(flags)
    # Our DoFns carry their configs; the main session need not be pickled.
    return options
