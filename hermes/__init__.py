"""hermes: multi-granularity labels for pre-training data mixtures (HERMES, arXiv 2607.02266).

Embeddings -> Learned Semantic Transform h = normalize(W e + b) -> 3-stage residual vector quantization
-> a code (c1, c2, c3) per document; prefixes of the code are buckets at coarse-to-fine granularity.
"""
from ._version import __version__
from ._backend import build_info, cuda_available
from .model import Model, load
from .assign import assign_codes, decode, quantization_error, transform
from . import buckets, metrics, mix
from .label import label, read_labels
from .convert import convert
from .train import fit, kmeans

__all__ = [
    "__version__", "Model", "load", "assign_codes", "transform", "decode", "quantization_error",
    "build_info", "cuda_available", "buckets", "metrics", "mix",
    "label", "read_labels", "convert", "fit", "kmeans",
]
