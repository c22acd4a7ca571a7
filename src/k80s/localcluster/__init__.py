"""A real local Kubernetes control plane with simulated K80 nodes, for the tests and `k80s demo`."""
