"""The streaming top-k search: per channel the strongest activations over a data set, and where they came from."""
