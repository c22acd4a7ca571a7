"""The pure core of k80s: GGUF parsing, model profiles, the estimator and die placement.

No I/O, no clock, no logging, and no Kubernetes, gRPC, kopf or NVML imports (a test checks it).
"""
