"""Converters from raw dataset formats to WebDataset shards (`python -m data_prep --help`, `bcm
prep`)."""
