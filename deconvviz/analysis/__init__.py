"""The paper's analyses, each a function returning a frozen result (see :mod:`deconvviz.analysis.base`).

Modules are imported on demand: ``import deconvviz.analysis`` does not import torch or matplotlib.
"""
