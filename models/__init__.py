"""Toy models of superposition (torch modules batched over instances) and their ground truth."""
from models.ground_truth import feature_dimensionality, hidden_responses
from models.toy import MODEL_KINDS, ToyModel

__all__ = ["MODEL_KINDS", "ToyModel", "hidden_responses", "feature_dimensionality"]
