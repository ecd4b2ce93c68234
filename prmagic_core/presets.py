"""Named sets of settings: which behaviour every component has (``--preset`` / ``preset=``).

Every result names its preset, and ``--json`` carries the resolved settings
(:meth:`Preset.as_dict`); a flag, or ``--set field=value``, overrides one setting.

- ``release`` (the default): PR-MaGIC as the authors' release (POSTECH-MinjaeLee/PR-MaGIC,
  e6e0705) computes it, component by component (SPEC section 8, items 1-12): PerSAM-F's
  cascade reuses call 1's box, the similarity is upsampled 64 -> 256 -> image, the support
  prototype keeps the cells of the preprocessed mask that stay > 0 after a bilinear resize,
  the band sampler excludes the top-1 pixel from both nested bands and never draws a pixel
  twice, the mixing weights are fitted on the top-1 + band points, the selector scores call
  1's mask (the candidate is call 3's), Matcher's step is added to the normalised tokens,
  Matcher's d_phi sums the high-res logits of all merged masks, Matcher runs with
  ``scripts/launch_matcher_pr.py``'s settings, DIS5K is run as a part task, prompts are
  re-drawn at every step, the selector score is cos + alpha_s * IoU + beta_s * margin with
  the launchers' 0 / 0, an empty support falls back (with a warning naming the episode),
  and the selector's support vector comes from the first shot. One exception: the extra
  band points are (x, y) with the flat index row * W + col, as the authors' correction
  notice says they were meant; ``release-v1`` is the code as it ran.
- ``release-v1``: ``release`` with the first release's (row, col) extra points and
  transposed de-duplication index (bands 0.99999 / 0.9999): what produced the original tables.
- ``corrected``: ``release`` with the authors' correction: (x, y) points, index
  row * W + col, the 0.99 / 0.90 quantile bands.
- ``principled``: this project's choices where they differ from the release for a reason
  (see :data:`PRINCIPLED`'s reasons, one line each).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

# Each setting with the values it may take (None: any number, or a tuple of numbers).
CHOICES = {
    "resampling": ("fresh", "fixed"),
    "similarity_upsampling": ("two-step", "direct"),
    "support_cells": ("preprocessed", "coverage"),
    "empty_support": ("fallback", "error"),
    "point_order": ("xy", "row_col"),
    "cascade_box": ("first", "each"),
    "fit_points": ("sampled", "top1"),
    "selector_mask": ("first-call", "candidate"),
    "selector_support": ("first", "all"),
    "selector_encoder": ("matching", "sam"),
    "step_injection": ("normalised", "raw"),
    "matcher_d_phi": ("merged-high-res", "best-low-res"),
    "matcher_settings": ("launcher", "matcher"),
}


@dataclass(frozen=True)
class Preset:
    """One behaviour of every component; field comments name SPEC section 8's item."""

    name: str
    resampling: str = "fresh"  # the loop re-draws random prompt choices at every step
    similarity_upsampling: str = "two-step"  # 2: 64 -> 256 (x4) -> SAM's postprocess to the image
    support_cells: str = "preprocessed"  # 3: the prototype's cell rule
    empty_support: str = "fallback"  # 12: all support features (PerSAM), a centre square (Matcher)
    point_order: str = "xy"  # 4: extra band points (x, y) or the first release's (row, col)
    band_quantiles: tuple = (0.99999, 0.9999)  # 4: band 1 = S >= q1, band 2 = S >= q2 (nested)
    cascade_box: str = "first"  # 1: PerSAM-F's call 3 reuses call 1's box, or the box of call 2's mask
    fit_points: str = "sampled"  # 5: the weight fit's prompts: top-1 + band points, or top-1 alone
    selector_mask: str = "first-call"  # 6: PerSAM-F's selector encodes call 1's mask, or the candidate
    alpha_s: float = 0.0  # 11: selector score weight of SAM's IoU prediction
    beta_s: float = 0.0  # 11: selector score weight of the margin (mean sigmoid inside - outside)
    selector_support: str = "first"  # 12: the support vector from the first shot, or all shots averaged
    selector_encoder: str = "matching"  # 10: Matcher's selector re-encodes with the matching encoder
    step_injection: str = "normalised"  # 7: Matcher's step added to the normalised tokens, or before normalising
    matcher_d_phi: str = "merged-high-res"  # 8: sum of all merged masks' high-res logits, or the best's low-res
    matcher_settings: str = "launcher"  # 9: launch_matcher_pr.py's settings, or Matcher's own scripts'
    part_like: tuple = ("paco", "pascal_part", "dis5k")  # benchmarks run as part tasks (eta 1e-4, 3 points)

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"preset {self.name}: {name} must be one of {allowed}, got {getattr(self, name)!r}")
        low, high = self.band_quantiles
        if not 0 < high < low < 1:
            raise ValueError(f"preset {self.name}: band_quantiles must be (q1, q2) with 1 > q1 > q2 > 0, "
                             f"got {self.band_quantiles}")
        if self.alpha_s < 0 or self.beta_s < 0:
            raise ValueError(f"preset {self.name}: alpha_s and beta_s must be >= 0")

    def as_dict(self) -> dict:
        out = asdict(self)
        out["band_quantiles"] = list(self.band_quantiles)
        out["part_like"] = list(self.part_like)
        return out

    def override(self, **changes) -> "Preset":
        """This preset with some settings changed; values may be strings (from ``--set``). The name
        gets a ``+`` so a result made with overrides never passes for the preset itself."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return self
        known = {f.name: f for f in fields(self)}
        parsed = {}
        for key, value in changes.items():
            if key not in known or key == "name":
                raise ValueError(f"unknown preset setting {key!r}; expected one of {', '.join(list(known)[1:])}")
            parsed[key] = _parse(key, value, getattr(self, key))
        if all(parsed[k] == getattr(self, k) for k in parsed):
            return self
        return replace(self, name=self.name if self.name.endswith("+") else self.name + "+", **parsed)


def _parse(key: str, value, current):
    if not isinstance(value, str):
        return tuple(value) if isinstance(current, tuple) else value
    if isinstance(current, tuple):
        items = [v for v in value.replace(" ", "").split(",") if v]
        try:
            return tuple(float(v) for v in items) if key == "band_quantiles" else tuple(items)
        except ValueError:
            raise ValueError(f"{key} takes numbers separated by commas, got {value!r}") from None
    if isinstance(current, float):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{key} takes a number, got {value!r}") from None
    return value


RELEASE = Preset("release")
RELEASE_V1 = replace(RELEASE, name="release-v1", point_order="row_col")
CORRECTED = replace(RELEASE, name="corrected", band_quantiles=(0.99, 0.90))
PRINCIPLED = Preset(
    name="principled",
    # Fixed draws: a candidate changes only where the flow moved the similarity map, not by re-drawing.
    resampling="fixed",
    # One 64 -> image interpolation: the two-step path adds a second smoothing with no purpose.
    similarity_upsampling="direct",
    # Any coverage: a cell partly inside a small object still carries its feature.
    support_cells="coverage",
    # An empty support is an error: a silent fallback scores an episode that has no target.
    empty_support="error",
    # The box of the mask being refined (call 2's), not the stale one of call 1.
    cascade_box="each",
    # PerSAM-F's own fit (top-1 point): the fitted weights then do not depend on random draws.
    fit_points="top1",
    # The selector scores the mask it returns (call 3's), not another one.
    selector_mask="candidate",
    # All shots' support vectors averaged: k shots are k views of the object.
    selector_support="all",
    # Normalise after the step: matching compares unit vectors, moved or not.
    step_injection="raw",
    # One d_phi for every baseline: the sum of the best candidate's low-res logits (SPEC section 2).
    matcher_d_phi="best-low-res",
    # Matcher's own per-benchmark settings (its published scripts).
    matcher_settings="matcher",
    # DIS5K segments whole objects: the object settings apply.
    part_like=("paco", "pascal_part"),
)

PRESETS = {p.name: p for p in (RELEASE, RELEASE_V1, CORRECTED, PRINCIPLED)}
DEFAULT = "release"


def get_preset(preset: "Preset | str | None" = None) -> Preset:
    """A preset by name (None: the default, ``release``); a :class:`Preset` is returned as is."""
    if isinstance(preset, Preset):
        return preset
    name = DEFAULT if preset is None else preset
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


def parse_assignments(assignments) -> dict:
    """``["cascade_box=each", ...]`` (from ``--set``) as a dict."""
    out = {}
    for item in assignments or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes FIELD=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


__all__ = ["CHOICES", "DEFAULT", "PRESETS", "Preset", "get_preset", "parse_assignments"]
