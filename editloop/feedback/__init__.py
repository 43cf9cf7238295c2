"""Feedback log on Redis streams (feedback issue)."""
