"""Trained weights: the cache, the sources they come from and the converters of foreign formats."""
