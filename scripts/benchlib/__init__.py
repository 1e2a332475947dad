"""The pieces of ``scripts/bench``: data set, servers, load, metrics, report.

Not part of the service: nothing under service/, storage/, cache/ or jobs/ imports this.
"""
