"""Seldon Core 2's scheduler API (package seldon.mlops.scheduler): our .proto and its generated modules."""
