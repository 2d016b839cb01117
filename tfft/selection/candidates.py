"""Bake-off candidates: what to try, parsed from strings like `"minilm:top_k:2"`."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from tfft.backbones import Backbone, list_backbones, parse_spec
from tfft.backbones.registry import ALIASES

TFIDF = "tfidf_logreg"
METHOD_FORMS = ("feature_extraction", "top_k:N", "full", "zero_shot")
CANDIDATE_FORMS = (
    "SPEC:feature_extraction, SPEC:top_k:N, SPEC:full, SPEC:zero_shot (SPEC a backbone spec "
    "such as minilm, keras_hub:all_minilm_l6_v2, offline:efficientnet_lite0, "
    "keras_app:MobileNetV2), 'tfidf_logreg', or a tfft.selection.Candidate"
)
_METHOD_RE = re.compile(r"^(?P<spec>.+?):(?P<method>feature_extraction|zero_shot|full|top_k:\d+)$")


@dataclasses.dataclass
class Candidate:
    """One entry of a bake-off.

    Args:
        backbone_spec: str or `tfft.Backbone`. None for non-deep candidates.
        method: str. `"feature_extraction"`, `"top_k:N"`, `"full"`,
            `"zero_shot"`, `"tfidf_logreg"` or `"custom"`.
        name: str. Shown in the leaderboard. Defaults to `"spec:method"`.
        load_kwargs: dict. Passed to `tfft.load_backbone`, e.g.
            `{"weights": None}` for a randomly initialised keras_app CNN.
        modality: str. `"text"` or `"image"`; looked up in the catalog (or
            taken from the loaded backbone) when None.
        fit_predict: callable `(train, val) -> dict` for `"custom"`
            candidates; the dict holds `"predictions"` (class ids for
            `val.x`) and optionally `"params"` and `"model"`.
        estimated_seconds: float. Cost estimate for custom candidates (and
            an override for others).
    """

    backbone_spec: object = None
    method: str = "feature_extraction"
    name: str = None
    load_kwargs: dict = dataclasses.field(default_factory=dict)
    modality: str = None
    fit_predict: object = None
    estimated_seconds: float = None

    def __post_init__(self):
        method = self.method
        valid = (method in ("feature_extraction", "full", "zero_shot", TFIDF, "custom")
                 or re.fullmatch(r"top_k:\d+", str(method)))
        if not valid:
            raise ValueError(
                f"Unknown candidate method. Expected one of {list(METHOD_FORMS)}, "
                f"'{TFIDF}' or 'custom'. Received: method={method!r}"
            )
        if method == "custom" and not callable(self.fit_predict):
            raise TypeError("A 'custom' candidate needs a callable fit_predict(train, val).")
        if method == TFIDF:
            self.modality = "text"
        elif method != "custom":
            if self.backbone_spec is None:
                raise ValueError(f"A {method!r} candidate needs a backbone_spec.")
            if isinstance(self.backbone_spec, str):
                parse_spec(self.backbone_spec)
        if self.name is None:
            if method in (TFIDF, "custom"):
                self.name = method
            else:
                spec = (self.backbone_spec if isinstance(self.backbone_spec, str)
                        else self.backbone_spec.name)
                self.name = f"{spec}:{method}"
        if self.modality is None:
            self.modality = _catalog_modality(self.backbone_spec)

    @property
    def is_backbone(self):
        return self.method not in (TFIDF, "custom")

    @property
    def is_fine_tune(self):
        return self.method == "full" or self.method.startswith("top_k:")

    @property
    def spec_key(self):
        """Identifies the backbone for sharing loads and features between candidates."""
        spec = self.backbone_spec
        spec = resolve_spec(spec) if isinstance(spec, str) else id(spec)
        return (spec, tuple(sorted((k, repr(v)) for k, v in self.load_kwargs.items())))


def resolve_spec(spec):
    spec = spec.strip()
    return ALIASES.get(spec, spec)


def catalog_info(spec):
    """The catalog's `BackboneInfo` for a spec, or None when it is not listed."""
    if isinstance(spec, Backbone):
        return spec.info
    if not isinstance(spec, str):
        return None
    spec = resolve_spec(spec)
    for info in list_backbones():
        if info.spec == spec:
            return info
    return None


def _catalog_modality(spec):
    info = catalog_info(spec)
    return info.modality if info is not None else None


def parse_candidate(item: str | Candidate) -> Candidate:
    """Turns a string (see `CANDIDATE_FORMS`) or a `Candidate` into a `Candidate`."""
    if isinstance(item, Candidate):
        return item
    if not isinstance(item, str):
        raise TypeError(
            f"A candidate must be a string ({CANDIDATE_FORMS}). "
            f"Received: {type(item).__name__}"
        )
    text = item.strip()
    if text == TFIDF:
        return Candidate(method=TFIDF)
    match = _METHOD_RE.match(text)
    if not match:
        raise ValueError(
            f"Unknown candidate. Expected {CANDIDATE_FORMS}. Received: {item!r}"
        )
    try:
        return Candidate(match["spec"], match["method"], name=text)
    except (ValueError, TypeError) as error:
        raise ValueError(f"Bad candidate {item!r}: {error}") from None


def parse_candidates(items: str | Sequence[str | Candidate]) -> list[Candidate]:
    """Parses a list (or a comma-separated string) of candidates; names must be unique."""
    if isinstance(items, str):
        items = [part for part in items.split(",") if part.strip()]
    items = list(items or [])
    if not items:
        raise ValueError(f"No candidates. Expected a list of {CANDIDATE_FORMS}.")
    candidates = [parse_candidate(item) for item in items]
    names = [c.name for c in candidates]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"Candidate names must be unique. Received duplicates: {duplicates}")
    return candidates
