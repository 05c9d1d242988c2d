"""The toy experiment of LoRA-MCL: mixtures of Markov chains, their sampler and exact theory."""
