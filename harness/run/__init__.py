"""Running things: shadow runs (call, score, store, resume), load tests, re-scoring and the response cache."""
