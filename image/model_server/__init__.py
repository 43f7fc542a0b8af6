"""A scikit-learn model server speaking the Open Inference Protocol (V2) and KServe V1."""

__version__ = "0.1.0"
