"""Toy models of superposition (torch modules batched over instances) and their ground truth."""
from unsuperpose.models.ground_truth import feature_dimensionality, hidden_responses
from unsuperpose.models.toy import MODEL_KINDS, ToyModel

__all__ = ["MODEL_KINDS", "ToyModel", "hidden_responses", "feature_dimensionality"]
