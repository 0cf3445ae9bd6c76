"""Comparisons of this codebase's ops and mixers with official reference code, run by hand outside the test
suite (each script says how to get the reference code and what it prints)."""
