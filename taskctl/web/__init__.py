"""The web process: rq-dashboard inside taskctl's own small Flask app.

The app, not rq-dashboard's own CLI, is what we run, so that the dashboard is
configured from the same settings as everything else (Redis URL, JSON
serializer) and so that later additions (auth, CSRF, metrics) have a home.
"""
