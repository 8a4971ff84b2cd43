"""Machine probes measured through the protocol: roofline peaks (GEMM FLOP/s, copy bandwidth)
per backend, the CPU's theoretical peak from its ISA flags, and a Session wrapper that lets any
probe kernel (the cache curve's reads too) be sampled, judged and stored like a benchmark."""
