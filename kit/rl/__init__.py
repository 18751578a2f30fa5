"""Paper B stage 1: RLOO with the CLIP reward (advantages, TRL subclass, estimator variance, figures)."""
