import numpy as np
import pytest

import tfft
from tfft.prompting import ZeroShotEncoderClassifier
from tfft.prompting.encoder import SentenceEmbedder, softmax

VERBALIZER = {"sport": ["sport", "match"], "business": ["business"], "film": ["film"]}
TEXTS = ["the match was won", "shares fell", "the film was good"]


@pytest.fixture()
def tiny_text_backbone(tiny_bert):
    model, preprocessor = tiny_bert
    info = tfft.BackboneInfo(name="tiny_bert", source="model", modality="text", feature_dim=8,
                             output_key="sequence_output", mask_key="padding_mask")
    return tfft.Backbone(model, info, preprocessor=preprocessor)


def _reference_embedding(backbone, texts):
    x = backbone.preprocessor(np.array(texts))
    seq = np.asarray(backbone.model(x)["sequence_output"])
    mask = np.asarray(x["padding_mask"], np.float32)[..., None]
    pooled = (seq * mask).sum(1) / mask.sum(1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def test_embeddings_are_masked_means(tiny_text_backbone):
    embedder = SentenceEmbedder(tiny_text_backbone, batch_size=2)
    got = embedder(TEXTS)
    np.testing.assert_allclose(got, _reference_embedding(tiny_text_backbone, TEXTS), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_scores_are_cosine_to_mean_label_prompt(tiny_text_backbone):
    clf = ZeroShotEncoderClassifier(tiny_text_backbone, "about {label} .", VERBALIZER)
    scores = clf.scores(TEXTS)
    emb = _reference_embedding(tiny_text_backbone, TEXTS)
    for c, words in enumerate(VERBALIZER.values()):
        mean = _reference_embedding(tiny_text_backbone, [f"about {w} ." for w in words]).mean(0)
        mean /= np.linalg.norm(mean)
        np.testing.assert_allclose(scores[:, c], emb @ mean, atol=1e-5)
    proba = clf.predict_proba(TEXTS)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(proba, softmax(scores, 0.05), rtol=1e-6)
    assert clf.predict(TEXTS) == [clf.class_names[i] for i in scores.argmax(1)]


def test_template_ensemble_averages(tiny_text_backbone):
    a = ZeroShotEncoderClassifier(tiny_text_backbone, "about {label} .", VERBALIZER)
    b = ZeroShotEncoderClassifier(tiny_text_backbone, "the {label}", VERBALIZER)
    both = ZeroShotEncoderClassifier(tiny_text_backbone, ["about {label} .", "the {label}"],
                                     VERBALIZER)
    np.testing.assert_allclose(both.scores(TEXTS), (a.scores(TEXTS) + b.scores(TEXTS)) / 2,
                               atol=1e-5)


def test_class_names_select_and_order(tiny_text_backbone):
    clf = ZeroShotEncoderClassifier(tiny_text_backbone, verbalizer=VERBALIZER,
                                    class_names=["film", "sport"])
    assert clf.class_names == ["film", "sport"]
    assert clf.predict_proba(TEXTS).shape == (3, 2)
    with pytest.raises(ValueError, match=r"\['tech'\]"):
        ZeroShotEncoderClassifier(tiny_text_backbone, verbalizer=VERBALIZER,
                                  class_names=["tech", "sport"])


def test_errors(tiny_text_backbone):
    with pytest.raises(ValueError, match=r"needs a {label} slot"):
        ZeroShotEncoderClassifier(tiny_text_backbone, "no slot", VERBALIZER)
    with pytest.raises(ValueError, match="temperature"):
        ZeroShotEncoderClassifier(tiny_text_backbone, verbalizer=VERBALIZER, temperature=0)
    with pytest.raises(ValueError, match="tokenise to nothing"):
        # The BERT tokenizer drops control characters entirely.
        ZeroShotEncoderClassifier(tiny_text_backbone, verbalizer={"a": ["sport"], "b": ["\x00"]})
    with pytest.raises(TypeError, match="list of texts"):
        ZeroShotEncoderClassifier(tiny_text_backbone, verbalizer=VERBALIZER).predict("text")
