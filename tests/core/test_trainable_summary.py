import json

import keras

import tfft


def _model():
    inputs = keras.Input((4,))
    frozen = keras.layers.Dense(3, name="frozen")
    frozen.trainable = False
    outputs = keras.layers.Dense(2, name="head")(frozen(inputs))
    return keras.Model(inputs, outputs)


def test_trainable_summary_returns_the_counts_and_prints_one_line(capsys):
    counts = tfft.trainable_summary(_model())
    # Code keeps indexing and comparing it as the dict it always was.
    assert counts == {"trainable": 3 * 2 + 2, "frozen": 4 * 3 + 3}
    assert json.loads(json.dumps(counts)) == {"trainable": 8, "frozen": 15}
    # What the README promises: printing it shows the counts readably.
    print(counts)
    assert capsys.readouterr().out == "8 trainable / 15 frozen parameters (34.78% trainable)\n"
