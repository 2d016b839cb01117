"""Prompt templates, label templates, verbalizers and template ensembles.

These are plain frozen dataclasses (validated in `__post_init__`, with
`to_dict()`/`from_dict()`), shared by every prompting classifier.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

INPUT_SLOT = "input"
LABEL_SLOT = "label"


def _slots(text):
    """Returns the `{field}` names in a format string, in order."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as error:
        raise ValueError(
            "A prompt template must be a valid format string with {input} and "
            "{label} slots (write literal braces as {{ and }}). "
            f"Received: {text!r} ({error})"
        ) from None
    return [field for _, field, _, _ in parsed if field is not None]


def _check_slots(text, allowed, required, kind):
    if not isinstance(text, str):
        raise TypeError(f"A {kind} must be a str. Received: {type(text).__name__}")
    slots = _slots(text)
    unknown = sorted({s for s in slots if s not in allowed})
    if unknown:
        raise ValueError(
            f"Unknown slot(s) {['{' + s + '}' for s in unknown]} in {kind}. Valid slots: "
            f"{['{' + s + '}' for s in allowed]}. Received: {text!r}"
        )
    for slot in required:
        if slot not in slots:
            raise ValueError(
                f"A {kind} needs a {{{slot}}} slot. Received: {text!r}"
            )
    for slot in allowed:
        if slots.count(slot) > 1:
            raise ValueError(
                f"The {{{slot}}} slot may appear only once in a {kind}. Received: {text!r}"
            )


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """A prompt with a slot for the input and (optionally) one for the label.

    `{input}` is required. `{label}` is where a causal LM's verbalized label is
    scored; without it the label is scored right after the prompt. Whitespace
    just before `{label}` belongs to the label continuation (`"Topic: {label}"`
    scores `" sport"`, which byte-level BPE tokenises as one word).

    Args:
        text: str. A format string, e.g. `"Article: {input}\\nTopic: {label}"`.

    Example:

    >>> template = PromptTemplate("Review: {input}\\nSentiment: {label}")
    >>> template.format("Great film.", "positive")
    'Review: Great film.\\nSentiment: positive'
    """

    text: str

    def __post_init__(self):
        _check_slots(self.text, (INPUT_SLOT, LABEL_SLOT), (INPUT_SLOT,), "prompt template")

    @property
    def has_label_slot(self) -> bool:
        return LABEL_SLOT in _slots(self.text)

    def format(self, input: str, label: str = "") -> str:
        """Fills the template; a template without `{label}` gets the label appended."""
        if self.has_label_slot:
            return self.text.format(input=input, label=label)
        return self.text.format(input=input) + label

    def split(self) -> tuple[str, str, str]:
        """Returns `(before_input, between_input_and_label, label_prefix)`.

        `label_prefix` is the whitespace moved from the prompt into the label
        continuation. Text after `{label}` is not part of the prompt.
        """
        head, _, rest = self.text.partition("{" + INPUT_SLOT + "}")
        between = rest.partition("{" + LABEL_SLOT + "}")[0] if self.has_label_slot else rest
        stripped = between.rstrip()
        label_prefix = between[len(stripped):]
        return _unescape(head), _unescape(stripped), label_prefix

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> PromptTemplate:
        return cls(**config)


@dataclasses.dataclass(frozen=True)
class LabelTemplate:
    """A sentence about a class, embedded by zero-shot encoders and CLIP.

    Args:
        text: str. A format string with one `{label}` slot and no `{input}`,
            e.g. `"This article is about {label}."`.
    """

    text: str

    def __post_init__(self):
        _check_slots(self.text, (LABEL_SLOT,), (LABEL_SLOT,), "label template")

    def format(self, label: str) -> str:
        return self.text.format(label=label)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> LabelTemplate:
        return cls(**config)


def _unescape(text):
    return text.replace("{{", "{").replace("}}", "}")


@dataclasses.dataclass(frozen=True)
class Verbalizer:
    """Maps each class to the words or phrases that stand for it in a prompt.

    Args:
        mapping: dict. `{class_name: word or [words]}`; a class with several
            words is scored by the mean of its words' scores.

    Example:

    >>> verbalizer = Verbalizer({"fresh": ["good", "great"], "rotten": "bad"})
    >>> verbalizer.words("rotten")
    ('bad',)
    """

    mapping: object

    def __post_init__(self):
        if isinstance(self.mapping, Verbalizer):
            object.__setattr__(self, "mapping", self.mapping.mapping)
        items = self.mapping.items() if isinstance(self.mapping, dict) else self.mapping
        try:
            items = list(items)
        except TypeError:
            raise TypeError(
                "A Verbalizer takes a dict {class_name: [words]}. "
                f"Received: {type(self.mapping).__name__}"
            ) from None
        normalised = []
        for entry in items:
            if not (isinstance(entry, (tuple, list)) and len(entry) == 2):
                raise TypeError(
                    "A Verbalizer takes a dict {class_name: [words]}. "
                    f"Received an entry: {entry!r}"
                )
            name, words = entry
            if isinstance(words, str):
                words = [words]
            words = tuple(words)
            if not words:
                raise ValueError(
                    f"Class {name!r} has no label words. Give each class at least one "
                    "word or phrase."
                )
            for word in words:
                if not isinstance(word, str) or not word.strip():
                    raise ValueError(
                        f"Label words must be non-empty strings. Received for class "
                        f"{name!r}: {word!r}"
                    )
            normalised.append((str(name), words))
        if not normalised:
            raise ValueError("A Verbalizer needs at least one class. Received an empty mapping.")
        names = [n for n, _ in normalised]
        if len(set(names)) != len(names):
            raise ValueError(f"Duplicate class names in Verbalizer: {names}")
        object.__setattr__(self, "mapping", tuple(normalised))

    @classmethod
    def from_class_names(cls, class_names: Sequence[str]) -> Verbalizer:
        """Each class is verbalized by its own name (underscores become spaces)."""
        return cls({name: [str(name).replace("_", " ")] for name in class_names})

    @property
    def class_names(self) -> list[str]:
        return [name for name, _ in self.mapping]

    def words(self, class_name: str) -> tuple[str, ...]:
        for name, words in self.mapping:
            if name == class_name:
                return words
        raise ValueError(
            f"Unknown class. Expected one of {self.class_names}. Received: {class_name!r}"
        )

    def for_classes(self, class_names: Sequence[str]) -> Verbalizer:
        """Returns this verbalizer restricted to and ordered by `class_names`.

        Raises:
            ValueError: some classes have no label words; lists them all.
        """
        class_names = [str(c) for c in class_names]
        missing = [c for c in class_names if c not in self.class_names]
        if missing:
            raise ValueError(
                f"The verbalizer has no label words for class(es) {missing}. It covers "
                f"{self.class_names}. Received: class_names={class_names}"
            )
        return Verbalizer({c: list(self.words(c)) for c in class_names})

    def check_tokens(self, tokenize: Callable[[str], Sequence[Any]]) -> None:
        """Raises ValueError for words that `tokenize` maps to no tokens."""
        empty = [
            (name, word) for name, words in self.mapping for word in words
            if len(tokenize(word)) == 0
        ]
        if empty:
            raise ValueError(
                "Some label words tokenise to nothing, so they cannot be scored: "
                f"{empty}. Use words the model's vocabulary covers."
            )

    def to_dict(self) -> dict[str, Any]:
        return {"mapping": {name: list(words) for name, words in self.mapping}}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> Verbalizer:
        return cls(**config)


def as_verbalizer(verbalizer, class_names=None):
    """Accepts a Verbalizer, a dict, or a list of class names."""
    if verbalizer is None:
        if class_names is None:
            raise ValueError("Pass a verbalizer ({class_name: [words]}) or class_names.")
        verbalizer = Verbalizer.from_class_names(class_names)
    elif isinstance(verbalizer, (list, tuple)) and all(isinstance(v, str) for v in verbalizer):
        verbalizer = Verbalizer.from_class_names(verbalizer)
    elif not isinstance(verbalizer, Verbalizer):
        verbalizer = Verbalizer(verbalizer)
    if class_names is not None:
        verbalizer = verbalizer.for_classes(class_names)
    return verbalizer


@dataclasses.dataclass(frozen=True)
class TemplateEnsemble:
    """Several templates whose class scores are averaged.

    Args:
        templates: list of str, `PromptTemplate` or `LabelTemplate`. Strings
            become the kind the classifier uses.
    """

    templates: tuple

    def __post_init__(self):
        templates = self.templates
        if isinstance(templates, (str, PromptTemplate, LabelTemplate)):
            raise TypeError(
                "TemplateEnsemble takes a list of templates. "
                f"Received a single {type(templates).__name__}"
            )
        templates = tuple(templates)
        if not templates:
            raise ValueError("A TemplateEnsemble needs at least one template. Received: []")
        for template in templates:
            if not isinstance(template, (str, PromptTemplate, LabelTemplate)):
                raise TypeError(
                    "Templates must be str, PromptTemplate or LabelTemplate. "
                    f"Received: {type(template).__name__}"
                )
        object.__setattr__(self, "templates", templates)

    def __len__(self):
        return len(self.templates)

    def __iter__(self):
        return iter(self.templates)

    def to_dict(self) -> dict[str, Any]:
        return {"templates": [t if isinstance(t, str) else t.text for t in self.templates]}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> TemplateEnsemble:
        return cls(**config)


# The forms a `template` / `verbalizer` argument of the prompting classifiers takes.
TemplateLike = (
    str | PromptTemplate | LabelTemplate | TemplateEnsemble
    | Sequence[str | PromptTemplate | LabelTemplate]
)
VerbalizerLike = Verbalizer | Mapping[str, str | Sequence[str]] | Sequence[str]


def as_templates(template, kind):
    """Normalises a template argument to a tuple of `kind` instances."""
    items = list(template) if isinstance(template, (TemplateEnsemble, list, tuple)) else [template]
    if not items:
        raise ValueError("Pass at least one template. Received: []")
    out = []
    for item in items:
        if isinstance(item, str):
            item = kind(item)
        elif isinstance(item, (PromptTemplate, LabelTemplate)):
            if not isinstance(item, kind):
                raise TypeError(
                    f"This classifier needs a {kind.__name__}. Received: {item!r}"
                )
        else:
            raise TypeError(
                "A template must be a str, PromptTemplate, LabelTemplate or "
                f"TemplateEnsemble. Received: {type(item).__name__}"
            )
        out.append(item)
    return tuple(out)
