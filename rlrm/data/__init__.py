"""Labeled transitions: the dataset format, collection, labelers and label importers."""

from rlrm.data.dataset import FORMAT_VERSION, TransitionDataset, find_datasets

__all__ = ["FORMAT_VERSION", "TransitionDataset", "find_datasets"]
