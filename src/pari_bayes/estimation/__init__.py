"""Estimation: the paper's OLS baseline and the Bayesian multilevel and latent models.

Modules are imported by name (``pari_bayes.estimation.ols``, ``...multilevel``, ...), so
that importing one estimator does not pull in the others' heavy dependencies.
"""
