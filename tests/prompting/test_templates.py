import dataclasses

import pytest

import tfft  # noqa: F401
from tfft.prompting.templates import (
    LabelTemplate,
    PromptTemplate,
    TemplateEnsemble,
    Verbalizer,
    as_templates,
    as_verbalizer,
)


def test_prompt_template_formats_and_splits():
    template = PromptTemplate("Article: {input}\nTopic: {label}")
    assert template.format("Goal!", "sport") == "Article: Goal!\nTopic: sport"
    # The space before {label} moves into the label continuation.
    assert template.split() == ("Article: ", "\nTopic:", " ")


def test_prompt_template_without_label_slot_appends_label():
    template = PromptTemplate("{input} It was")
    assert not template.has_label_slot
    assert template.format("Nice.", " great") == "Nice. It was great"
    assert template.split() == ("", " It was", "")


def test_prompt_template_escaped_braces():
    template = PromptTemplate("{{json}} {input} -> {label}")
    assert template.format("x", "y") == "{json} x -> y"
    assert template.split()[0] == "{json} "


@pytest.mark.parametrize(
    "text, message",
    [
        ("Topic: {label}", "needs a {input} slot"),
        ("{input} {topic}", "Unknown slot"),
        ("{input} {input} {label}", "only once"),
        ("{input} {", "valid format string"),
    ],
)
def test_prompt_template_rejects_bad_text(text, message):
    with pytest.raises(ValueError, match=message):
        PromptTemplate(text)


def test_prompt_template_is_frozen_and_round_trips():
    template = PromptTemplate("{input} => {label}")
    with pytest.raises(dataclasses.FrozenInstanceError):
        template.text = "x"
    assert PromptTemplate.from_dict(template.to_dict()) == template


def test_label_template_validation():
    assert LabelTemplate("About {label}.").format("tech") == "About tech."
    with pytest.raises(ValueError, match=r"needs a {label} slot"):
        LabelTemplate("About nothing.")
    with pytest.raises(ValueError, match="Unknown slot"):
        LabelTemplate("{input} is about {label}")


def test_verbalizer_normalises_and_orders():
    verbalizer = Verbalizer({"fresh": ["good", "great"], "rotten": "bad"})
    assert verbalizer.class_names == ["fresh", "rotten"]
    assert verbalizer.words("rotten") == ("bad",)
    reordered = verbalizer.for_classes(["rotten", "fresh"])
    assert reordered.class_names == ["rotten", "fresh"]
    assert Verbalizer.from_dict(verbalizer.to_dict()) == verbalizer
    hash(verbalizer)  # frozen and hashable: usable as a cache key


def test_verbalizer_lists_every_missing_class():
    verbalizer = Verbalizer({"sport": "sport"})
    with pytest.raises(ValueError) as info:
        verbalizer.for_classes(["business", "sport", "tech"])
    assert "['business', 'tech']" in str(info.value)


@pytest.mark.parametrize("mapping", [{"a": []}, {"a": [""]}, {"a": ["  "]}, {}])
def test_verbalizer_rejects_empty_words(mapping):
    with pytest.raises(ValueError):
        Verbalizer(mapping)


def test_verbalizer_rejects_words_that_tokenise_to_nothing():
    verbalizer = Verbalizer({"a": ["alpha"], "b": ["\u200b\u200b", "beta"]})
    tokenize = lambda text: [c for c in text if c.isalpha()]  # noqa: E731
    with pytest.raises(ValueError, match="tokenise to nothing") as info:
        verbalizer.check_tokens(tokenize)
    assert "('b'," in str(info.value) and "alpha" not in str(info.value)


def test_as_verbalizer_accepts_class_names():
    verbalizer = as_verbalizer(["sci_fi", "drama"])
    assert verbalizer.words("sci_fi") == ("sci fi",)


def test_template_ensemble():
    ensemble = TemplateEnsemble(["{input} is {label}", PromptTemplate("{input}: {label}")])
    assert len(ensemble) == 2
    templates = as_templates(ensemble, PromptTemplate)
    assert all(isinstance(t, PromptTemplate) for t in templates)
    with pytest.raises(TypeError):
        TemplateEnsemble("{input} {label}")
    with pytest.raises(ValueError):
        TemplateEnsemble([])
    with pytest.raises(TypeError, match="needs a PromptTemplate"):
        as_templates([LabelTemplate("{label}")], PromptTemplate)
