import numpy as np
import pytest

import tfft  # noqa: F401
from tfft.prompting.clip import ZeroShotImageClassifier

CLASSES = ["cat", "dog", "car"]


def test_shapes_and_probabilities(tiny_clip, tiny_images):
    backbone, tokenizer = tiny_clip
    clf = ZeroShotImageClassifier(backbone, tokenizer=tokenizer, verbalizer=CLASSES)
    proba = clf.predict_proba(tiny_images)
    assert proba.shape == (5, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert clf.class_embeddings().shape == (3, 6)
    assert clf.image_embeddings(tiny_images[0]).shape == (1, 6)  # a single image works too
    np.testing.assert_allclose(np.linalg.norm(clf.class_embeddings(), axis=1), 1.0, rtol=1e-5)


def test_picks_the_class_with_the_closest_prompt_embedding(tiny_clip, tiny_images):
    backbone, tokenizer = tiny_clip
    clf = ZeroShotImageClassifier(backbone, tokenizer=tokenizer, verbalizer=CLASSES)
    # Reference computed directly from the backbone, independently of the classifier.
    image = backbone.get_vision_embeddings(tiny_images).numpy()
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    texts = []
    for c in CLASSES:
        ids = clf._token_ids([f"a photo of a {c}."])
        t = backbone.get_text_embeddings(ids).numpy()[0]
        texts.append(t / np.linalg.norm(t))
    expected = [CLASSES[i] for i in (image @ np.stack(texts).T).argmax(axis=1)]
    assert clf.predict(tiny_images) == expected
    # Reordering the classes must not change which class wins.
    flipped = ZeroShotImageClassifier(backbone, tokenizer=tokenizer,
                                      verbalizer=list(reversed(CLASSES)))
    assert flipped.predict(tiny_images) == expected


def test_low_temperature_sharpens(tiny_clip, tiny_images):
    backbone, tokenizer = tiny_clip
    warm = ZeroShotImageClassifier(backbone, tokenizer=tokenizer, verbalizer=CLASSES,
                                   temperature=1.0)
    cold = ZeroShotImageClassifier(backbone, tokenizer=tokenizer, verbalizer=CLASSES,
                                   temperature=0.001)
    assert warm.predict(tiny_images) == cold.predict(tiny_images)
    assert (cold.predict_proba(tiny_images).max(axis=1) > 0.9).all()
    assert (warm.predict_proba(tiny_images).max(axis=1) < 0.9).all()


def test_prompt_ensembles_average_prompt_embeddings(tiny_clip):
    backbone, tokenizer = tiny_clip
    prompts = {"cat": ["a photo of a cat.", "the cat."], "dog": "a photo of a dog."}
    clf = ZeroShotImageClassifier(backbone, tokenizer=tokenizer, class_prompts=prompts)
    each = clf.text_embeddings(prompts["cat"])
    mean = each.mean(axis=0)
    np.testing.assert_allclose(clf.class_embeddings()[0], mean / np.linalg.norm(mean), rtol=1e-5)


def test_logit_scale_is_used(tiny_clip, tiny_images):
    backbone, tokenizer = tiny_clip
    backbone({"images": tiny_images[:1], "token_ids": np.ones((1, 12), "int32")})  # builds head
    clf = ZeroShotImageClassifier(backbone, tokenizer=tokenizer, verbalizer=CLASSES)
    cosine = clf.image_embeddings(tiny_images) @ clf.class_embeddings().T
    # A learnt scale unlike CLIP's initial 1/0.07, so the fallback cannot pass for it.
    scale = backbone.clip_head.logit_scale
    initial = np.asarray(scale).copy()
    scale.assign(np.log(25.0).astype(initial.dtype))
    try:
        np.testing.assert_allclose(clf.logits(tiny_images), cosine * 25.0, rtol=1e-4)
    finally:
        scale.assign(initial)


def test_bad_arguments(tiny_clip):
    backbone, tokenizer = tiny_clip
    with pytest.raises(TypeError, match="CLIPBackbone"):
        ZeroShotImageClassifier(object(), tokenizer=tokenizer, verbalizer=CLASSES)
    with pytest.raises(ValueError, match="CLIPTokenizer"):
        ZeroShotImageClassifier(backbone, verbalizer=CLASSES)
    with pytest.raises(ValueError, match="not both"):
        ZeroShotImageClassifier(backbone, tokenizer=tokenizer, verbalizer=CLASSES,
                                class_prompts={"cat": "a cat"})
    with pytest.raises(ValueError, match=r"needs a {label} slot"):
        ZeroShotImageClassifier(backbone, tokenizer=tokenizer, verbalizer=CLASSES,
                                template="a photo")
