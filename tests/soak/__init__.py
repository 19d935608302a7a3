"""A bounded load soak under gunicorn (issue 9): see test_soak.py."""
