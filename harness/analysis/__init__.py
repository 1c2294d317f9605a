"""Statistics over stored runs: per-provider summaries, paired outcomes, the gate, cost, the cascade and the
migration decision. Reads the store; never calls a model."""
