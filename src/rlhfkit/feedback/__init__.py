"""Feedback: simulated annotator panels (and, later, AI judges and the annotation app)."""
