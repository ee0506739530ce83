"""Reporting: the typed per-model entry, report.json/md and plots, and the check gate."""
