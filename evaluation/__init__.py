"""Evaluation tooling on top of training: disentanglement metrics, playing checks, experiment drivers, report,
plots, and the corpora makers (demo corpus from recorded samples, synthetic corpus with known factors)."""
