"""One module per ``pari-bayes`` subcommand (see :mod:`pari_bayes.cli`)."""
