"""The online service: new items through the funnel one at a time, recommendations over a finished run.

``store`` keeps added items in SQLite, ``towers`` the run's filter, ``judging`` its judge,
``online`` the funnel for new items, ``index`` the in-memory recommendation snapshot and ``app``
the FastAPI application (``create_app``). FastAPI is an optional extra (``coldllm[serve]``), so
nothing here is imported by the rest of the package.
"""
