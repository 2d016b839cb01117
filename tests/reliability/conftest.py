"""A small BERT preset folder, so resume and determinism tests run the real
`tfft finetune` path (tokenizer, two stages, checkpoints) in seconds."""

import keras
import pytest

WORDS = [
    "the", "a", "of", "to", "and", "in", "is", "on", "for", "with", "said", "was", "it", "by", "at",
    "from", "has", "have", "be", "are", "that", "government", "minister", "party", "election",
    "labour", "tory", "vote", "company", "market", "shares", "bank", "profit", "sales", "firm",
    "growth", "film", "music", "star", "award", "show", "band", "album", "game", "match", "team",
    "win", "player", "cup", "season", "club", "phone", "software", "computer", "internet", "mobile",
    "technology", "users",
]


@pytest.fixture(scope="session")
def small_preset(tmp_path_factory):
    import keras_hub

    folder = tmp_path_factory.mktemp("small_bert_preset")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocab), num_layers=2, num_heads=2, hidden_dim=64,
        intermediate_dim=128, max_sequence_length=128,
    )
    backbone.save_to_preset(str(folder))
    keras_hub.models.BertTokenizer(vocabulary=vocab).save_to_preset(str(folder))
    return str(folder)
