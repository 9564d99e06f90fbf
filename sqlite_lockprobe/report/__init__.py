"""Renderers: turn plain report data into terminal output, JSON, JUnit XML or timelines."""
