"""The patch-series half: pin -> series/headers -> materialize -> refresh/check/status."""
