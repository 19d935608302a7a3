"""Real-browser tests: headless Chromium (Debian's) drives ``wsgi-kvsession demo``."""
