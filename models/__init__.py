"""Offline side of rnncast: data, features, Keras models, training, evaluation and the numpy step engine."""
