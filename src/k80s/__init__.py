"""k80s: serve large language models on NVIDIA Tesla K80 clusters with Kubernetes."""

__version__ = "0.1.0"
