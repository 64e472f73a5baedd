"""How a model decodes: the settings of ``generate``, the three named presets, and the options that pick one.

Light on purpose (no torch): the steps' option declarations (``steps/config.py``) read them from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from components.settings import DECODING, TokenizationSettings, setting


@dataclass(frozen=True)
class Decoding:
    """Decoding settings; temperature, top_k and top_p only act when ``do_sample``."""

    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    max_new_tokens: int = TokenizationSettings.max_target_length

    def describe(self) -> str:
        if self.do_sample:
            mode = f"sampling (temperature={self.temperature}, top_k={self.top_k}, top_p={self.top_p})"
            if self.num_beams > 1:
                mode = f"beam sampling with {self.num_beams} beams, " + mode
        else:
            mode = f"beam search with {self.num_beams} beams" if self.num_beams > 1 else "greedy decoding"
            if (self.temperature, self.top_k, self.top_p) != (Decoding.temperature, Decoding.top_k, Decoding.top_p):
                mode += " (temperature/top_k/top_p are set but do nothing without do_sample)"
        return f"{mode}, at most {self.max_new_tokens} new tokens"

    def generate_kwargs(self) -> dict:
        kwargs = {"num_beams": self.num_beams, "do_sample": self.do_sample, "max_new_tokens": self.max_new_tokens}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return kwargs


# Three ways to decode, for evaluation and the CLI: the deterministic default, a
# beam search for quality, and sampling for variety.
DECODING_PRESETS = {"greedy": Decoding(), "beam": Decoding(num_beams=4), "sampling": Decoding(do_sample=True, temperature=0.7, top_k=50, top_p=0.95)}


DECODING_GROUP = "decoding (a preset, and what its options override)"


@dataclass(frozen=True)
class DecodingOptions:
    decoding: str = setting(DECODING, "decoding preset", pipeline=True, choices=tuple(sorted(DECODING_PRESETS)), group=DECODING_GROUP)
    num_beams: int | None = setting(None, "beam count (default: the decoding preset's)", group=DECODING_GROUP)
    do_sample: bool | None = setting(None, "sample instead of searching (default: the decoding preset's)", group=DECODING_GROUP)
    temperature: float | None = setting(None, "sampling temperature (default: the decoding preset's)", group=DECODING_GROUP)
    top_k: int | None = setting(None, "sample among the k likeliest tokens (default: the decoding preset's)", group=DECODING_GROUP)
    top_p: float | None = setting(
        None, "sample among the likeliest tokens that make up this probability (default: the decoding preset's)", group=DECODING_GROUP
    )
    max_new_tokens: int | None = setting(
        None,
        f"tokens generated at most (default: the decoding preset's, {DECODING_PRESETS[DECODING].max_new_tokens})",
        pipeline=True,
        group=DECODING_GROUP,
    )


def chosen_decoding(options: Any) -> Decoding:
    """The decoding ``options`` (an object with DecodingOptions' fields, as parsed) asks for: its preset, then the
    settings it gives (None: the preset's)."""
    overrides = {name: getattr(options, name) for name in asdict(Decoding()) if getattr(options, name) is not None}
    return replace(DECODING_PRESETS[options.decoding], **overrides)
