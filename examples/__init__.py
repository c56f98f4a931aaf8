"""A runnable demonstration of database access isolation (``python examples/demo.py``)."""
