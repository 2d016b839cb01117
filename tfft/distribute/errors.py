"""The error every tf.distribute helper of tfft raises."""


class StrategyError(ValueError):
    """A distribution setting is invalid, or the hardware it asks for is not here."""
