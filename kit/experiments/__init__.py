"""Experiments: send requests, drive workloads, sample metrics, compare profiles, plot and report.

``results`` holds the typed rows everything here shares; ``plots`` depends on it and plotly only.
"""
